"""CORS for paying browsers (issue 14) must not open a way around the meter.

The recipe (``x402_meter.cors``): Starlette's ``CORSMiddleware`` outside ``X402Meter``. It
answers preflights itself, so a preflight never reaches the meter nor an endpoint; any other
``OPTIONS`` goes through the meter like every request, and is metered where the route is.
The apps here have metered endpoints that also accept ``OPTIONS`` (the worst case: an
``OPTIONS`` the meter let through would run them unpaid), and count every run.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.middleware.cors import CORSMiddleware

from tests.apps import meter_options
from x402_meter import X402Meter, metered
from x402_meter.cors import ALLOW_HEADERS, EXPOSE_HEADERS
from x402_meter.devstack import LocalStack
from x402_meter.devstack.asgi_server import serving

PAGE = "https://chat.example"
METERED_PATHS = ("/v1/answer", "/premium")


def cors_app(stack: LocalStack, runs: list[str]) -> FastAPI:
    """Two metered endpoints (a route pattern for any method, and ``@metered``) that also
    accept ``OPTIONS``, a free one, and the CORS recipe around the meter."""
    app = FastAPI()

    @app.api_route("/v1/answer", methods=["POST", "OPTIONS"])
    async def answer() -> dict[str, str]:
        runs.append("/v1/answer")
        return {"answer": "paid for?"}

    @app.api_route("/premium", methods=["POST", "OPTIONS"])
    @metered(price_per_token="0.00001", max_tokens=16)
    async def premium() -> dict[str, str]:
        runs.append("/premium")
        return {"answer": "paid for?"}

    @app.get("/free")
    async def free() -> dict[str, str]:
        return {"free": "yes"}

    app.add_middleware(X402Meter, **meter_options(stack, routes=["/v1/answer"]))
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[PAGE],
        allow_methods=["GET", "POST"],
        allow_headers=ALLOW_HEADERS,
        expose_headers=EXPOSE_HEADERS,
    )
    return app


@pytest.fixture
async def served(
    x402_local_stack: LocalStack,
) -> AsyncIterator[tuple[httpx.AsyncClient, list[str]]]:
    runs: list[str] = []
    async with (
        serving(cors_app(x402_local_stack, runs)) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        yield http, runs


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": method,
        "access-control-request-headers": ",".join(("content-type", *ALLOW_HEADERS)),
    }


@pytest.mark.anyio
async def test_a_preflight_is_answered_by_cors_and_never_reaches_a_metered_endpoint(
    served: tuple[httpx.AsyncClient, list[str]],
) -> None:
    http, runs = served
    for path in METERED_PATHS:
        allowed = await http.options(path, headers=preflight(PAGE))
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == PAGE
        granted = {
            h.strip().lower() for h in allowed.headers["access-control-allow-headers"].split(",")
        }
        assert {"payment-signature", "x-payment", "access-control-expose-headers"} <= granted

        refused = await http.options(path, headers=preflight("https://evil.example"))
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
    assert runs == []


@pytest.mark.anyio
async def test_an_options_request_that_is_not_a_preflight_is_metered(
    served: tuple[httpx.AsyncClient, list[str]],
) -> None:
    http, runs = served
    for path in METERED_PATHS:
        for headers in (
            {},
            {"origin": PAGE},
            {"origin": PAGE, "access-control-request-headers": "x"},
        ):
            answer = await http.options(path, headers=headers)
            assert answer.status_code == 402, (path, headers, answer.text)
    assert runs == []


@pytest.mark.anyio
async def test_a_browser_can_read_the_402_and_is_told_how_to_pay(
    served: tuple[httpx.AsyncClient, list[str]],
) -> None:
    http, runs = served
    answer = await http.post("/premium", headers={"origin": PAGE}, json={"prompt": "hi"})

    assert answer.status_code == 402
    assert answer.headers["access-control-allow-origin"] == PAGE
    exposed = {
        h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")
    }
    assert {"payment-required", "payment-response", "x-payment-receipt"} <= exposed
    required = json.loads(base64.b64decode(answer.headers["payment-required"]))
    assert required["accepts"][0]["scheme"] == "upto"
    assert (await http.get("/free", headers={"origin": PAGE})).headers[
        "access-control-allow-origin"
    ] == PAGE
    assert runs == []


# ---- property: no OPTIONS, whatever its headers, runs a metered endpoint ----------------


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as portal:
        yield portal


@pytest.fixture(scope="module")
def direct(
    x402_local_stack: LocalStack, portal: BlockingPortal
) -> Iterator[tuple[httpx.AsyncClient, list[str]]]:
    runs: list[str] = []
    transport = httpx.ASGITransport(app=cors_app(x402_local_stack, runs))
    client = httpx.AsyncClient(transport=transport, base_url="http://api.test")
    yield client, runs
    portal.call(client.aclose)


TOKENS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_,* ", max_size=40)
HEADER_VALUES: dict[str, Any] = {
    "origin": st.sampled_from([PAGE, "https://evil.example", "null", PAGE.upper()]) | TOKENS,
    "access-control-request-method": st.sampled_from(["POST", "GET", "OPTIONS", "post", ""])
    | TOKENS,
    "access-control-request-headers": st.sampled_from([",".join(ALLOW_HEADERS), "*"]) | TOKENS,
    "payment-signature": st.sampled_from(["", "e30=", "not base64"]),
}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(METERED_PATHS),
    headers=st.fixed_dictionaries({}, optional=HEADER_VALUES),
)
def test_no_options_request_runs_a_metered_endpoint_unpaid(
    direct: tuple[httpx.AsyncClient, list[str]],
    portal: BlockingPortal,
    path: str,
    headers: dict[str, str],
) -> None:
    client, runs = direct
    answer = portal.call(lambda: client.options(path, headers=headers))
    assert runs == []
    assert answer.status_code in (200, 400, 402), (headers, answer.status_code, answer.text)
    if answer.status_code == 200:  # only CORS answers OPTIONS here: a preflight it granted
        assert "access-control-request-method" in {h.lower() for h in headers}
        assert answer.text == "OK"
