"""The FastAPI example answers browsers on the origins of ``X402_CORS_ORIGINS`` (issue 14).

Reported: the example had no CORS at all (a preflight was 405) and a page could not read
``PAYMENT-REQUIRED``. Served by uvicorn against the local stack, configured from the
environment as a deployment is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from examples.common.settings import Settings
from examples.fastapi_app.app import create_app
from x402_meter import ConfigurationError, MemoryStore
from x402_meter.devstack import LocalStack
from x402_meter.devstack.asgi_server import serving

PAGE = "http://localhost:5173"
PAID_ROUTES = ("/v1/chat/completions", "/premium/v1/chat/completions", "/flat/v1/chat/completions")
REQUEST_HEADERS = "content-type,payment-signature,access-control-expose-headers"
ASK = {"model": "local-stub", "messages": [{"role": "user", "content": "hi"}]}


def environment(stack: LocalStack, **extra: str) -> dict[str, str]:
    return {
        "X402_PAY_TO": stack.pay_to,
        "X402_NETWORK": stack.network,
        "X402_FACILITATOR_URL": stack.facilitator_url,
        "X402_FACILITATOR_API_KEY": stack.facilitator_api_key or "",
        "X402_ASSET": stack.asset,
        "X402_ASSET_NAME": stack.asset_name,
        "X402_ASSET_VERSION": stack.asset_version,
        **extra,
    }


async def api(env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings.from_env(env), store=MemoryStore())
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        yield http


@pytest.fixture
async def with_cors(x402_local_stack: LocalStack) -> AsyncIterator[httpx.AsyncClient]:
    async for http in api(
        environment(x402_local_stack, X402_CORS_ORIGINS=f"{PAGE}, https://b.example")
    ):
        yield http


@pytest.fixture
async def without_cors(x402_local_stack: LocalStack) -> AsyncIterator[httpx.AsyncClient]:
    async for http in api(environment(x402_local_stack)):
        yield http


def listed(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",")}


@pytest.mark.anyio
async def test_a_page_on_an_allowed_origin_may_send_a_payment_to_every_paid_route(
    with_cors: httpx.AsyncClient,
) -> None:
    for path in PAID_ROUTES:
        answer = await with_cors.options(
            path,
            headers={
                "origin": PAGE,
                "access-control-request-method": "POST",
                "access-control-request-headers": REQUEST_HEADERS,
            },
        )
        assert answer.status_code == 200, path
        assert answer.headers["access-control-allow-origin"] == PAGE
        assert {"payment-signature", "x-payment", "access-control-expose-headers"} <= listed(
            answer.headers["access-control-allow-headers"]
        )


@pytest.mark.anyio
async def test_the_402_is_readable_by_the_page(with_cors: httpx.AsyncClient) -> None:
    for path in PAID_ROUTES:
        answer = await with_cors.post(path, json=ASK, headers={"origin": PAGE})
        assert answer.status_code == 402, path
        assert answer.headers["access-control-allow-origin"] == PAGE
        assert {"payment-required", "payment-response", "x-payment-receipt"} <= listed(
            answer.headers["access-control-expose-headers"]
        )
        assert answer.headers["payment-required"]
    free = await with_cors.get("/v1/models", headers={"origin": PAGE})
    assert free.status_code == 200
    assert free.headers["access-control-allow-origin"] == PAGE


@pytest.mark.anyio
async def test_other_origins_get_no_cors(
    with_cors: httpx.AsyncClient, without_cors: httpx.AsyncClient
) -> None:
    preflight = {"origin": "https://evil.example", "access-control-request-method": "POST"}
    assert (await with_cors.options(PAID_ROUTES[0], headers=preflight)).status_code == 400
    unpaid = await with_cors.post(
        PAID_ROUTES[0], json=ASK, headers={"origin": "https://evil.example"}
    )
    assert unpaid.status_code == 402
    assert "access-control-allow-origin" not in unpaid.headers
    # Unset, the API answers no browser but its own pages.
    preflight["origin"] = PAGE
    assert (await without_cors.options(PAID_ROUTES[0], headers=preflight)).status_code == 405


@pytest.mark.parametrize("origins", ["http://localhost:5173/", "localhost:5173", "ftp://a.example"])
def test_a_malformed_origin_stops_the_example_at_startup(origins: str) -> None:
    with pytest.raises(ConfigurationError, match="X402_CORS_ORIGINS"):
        Settings.from_env({"X402_PAY_TO": "0x" + "1" * 40, "X402_CORS_ORIGINS": origins})
