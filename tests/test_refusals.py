"""Clear refusals and receipts a person can read, against the local stack over real servers.

A route priced by model says why it cannot price a request (a body that is not JSON, no
model, a model without a price) and lists the models it prices; receipts show amounts in
the asset's units beside atomic units; an answer the app failed carries its receipt too
(``not_charged``), on FastAPI and on Litestar through ``X402MeterPlugin``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from anyio.from_thread import start_blocking_portal
from eth_account import Account
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar import Response as LitestarResponse
from litestar import post as litestar_post
from x402.http.clients import x402HttpxClient

from tests.apps import completion_json, meter_options, sse_body
from tests.sdk_payer import sdk_client
from x402_meter import PriceTable, TokenPrice, X402Meter
from x402_meter.devstack import LocalStack, token_balance
from x402_meter.devstack.asgi_server import serving
from x402_meter.integrations.litestar import X402MeterPlugin

TABLE = PriceTable({"small": TokenPrice.flat("0.000001"), "large": TokenPrice.flat("0.00001")})
MODELS = ["large", "small"]
REFUSALS = {"invalid_json_body", "model_required", "unknown_model"}


def table_app(stack: LocalStack, runs: list[object], table: PriceTable = TABLE) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        runs.append(await request.body())
        return JSONResponse(completion_json())

    app.add_middleware(X402Meter, **meter_options(stack, price_per_token=table))
    return app


@pytest.fixture(scope="module")
def table_server(x402_local_stack: LocalStack) -> Iterator[tuple[str, list[object]]]:
    """One FastAPI app priced by ``TABLE``, served by uvicorn on a thread of its own."""
    runs: list[object] = []
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(serving(table_app(x402_local_stack, runs))) as base,
    ):
        yield base, runs


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"model=small", "invalid_json_body"),
        (b"", "invalid_json_body"),
        (b'{"model": "small"', "invalid_json_body"),
        (b'{"messages": []}', "model_required"),
        (b'{"model": 5}', "model_required"),
        (b'{"model": ""}', "model_required"),
        (b'["small"]', "model_required"),
        (b'{"model": "medium"}', "unknown_model"),
    ],
)
def test_a_price_table_route_says_why_it_cannot_price_a_body_and_lists_its_models(
    table_server: tuple[str, list[object]], body: bytes, reason: str
) -> None:
    base, runs = table_server
    runs.clear()
    response = httpx.post(
        f"{base}/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    answer = response.json()
    assert (answer["reason"], answer["models"]) == (reason, MODELS)
    assert "large, small" in answer["error"]
    assert runs == []


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.dictionaries(
            st.sampled_from(["model", "messages", "Model"]),
            st.one_of(st.none(), st.integers(), st.text(max_size=20), st.sampled_from(MODELS)),
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_a_price_table_route_answers_any_body_with_a_402_or_a_refusal_naming_its_models(
    table_server: tuple[str, list[object]], body: bytes
) -> None:
    base, runs = table_server
    runs.clear()
    response = httpx.post(f"{base}/v1/chat/completions", content=body)
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    model = parsed.get("model") if isinstance(parsed, dict) else None
    priced = isinstance(model, str) and TABLE.price_for(model) is not None
    if priced:
        assert response.status_code == 402, response.text
    else:
        assert response.status_code == 400, response.text
        assert response.json()["reason"] in REFUSALS
        assert response.json()["models"] == MODELS
    assert runs == []


def test_a_price_table_with_a_default_prices_a_body_that_names_no_model(
    x402_local_stack: LocalStack,
) -> None:
    table = PriceTable({"small": TokenPrice.flat("0.000001")}, default="0.000002")
    app = table_app(x402_local_stack, [], table)
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(serving(app)) as base,
    ):
        response = httpx.post(f"{base}/v1/chat/completions", json={"messages": []})
    assert response.status_code == 402


# -- receipts ------------------------------------------------------------------------------


def upstream_failing_fastapi(stack: LocalStack, status: int, stream: bool) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat() -> Response:
        if stream:
            return StreamingResponse(sse_body(), status_code=status, media_type="text/event-stream")
        return JSONResponse({"error": {"message": "the upstream failed"}}, status_code=status)

    app.add_middleware(X402Meter, **meter_options(stack))
    return app


def upstream_failing_litestar(stack: LocalStack, status: int) -> Litestar:
    @litestar_post("/v1/chat/completions", status_code=200)
    async def chat() -> LitestarResponse[dict[str, Any]]:
        return LitestarResponse({"error": {"message": "the upstream failed"}}, status_code=status)

    return Litestar(route_handlers=[chat], plugins=[X402MeterPlugin(**meter_options(stack))])


CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


async def pay_and_read_receipt(
    stack: LocalStack, base: str, key_index: int
) -> tuple[httpx.Response, dict[str, Any], int]:
    """Pay one chat request with the official SDK client; the answer, its receipt (read from
    the link the answer carries) and what the payer's balance fell by."""
    key = stack.payer_private_keys[key_index]
    payer = Account.from_key(key).address
    before = token_balance(stack.web3(), stack.asset, payer)
    async with x402HttpxClient(sdk_client(stack, key), timeout=60) as client:
        response = await client.post(f"{base}/v1/chat/completions", json=CHAT)
        link = response.headers["x-payment-receipt"]
        read = await client.get(base + link, params={"wait": 20})
    assert read.status_code == 200, read.text
    return response, read.json(), before - token_balance(stack.web3(), stack.asset, payer)


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "stream"), [(502, False), (429, False), (500, True)])
async def test_an_answer_the_upstream_failed_carries_a_receipt_that_says_not_charged(
    x402_local_stack: LocalStack, status: int, stream: bool
) -> None:
    async with serving(upstream_failing_fastapi(x402_local_stack, status, stream)) as base:
        response, receipt, spent = await pay_and_read_receipt(x402_local_stack, base, 5)
    assert response.status_code == status
    assert (receipt["status"], receipt["amount"], receipt["amount_units"]) == (
        "not_charged",
        "0",
        "0.000000",
    )
    assert spent == 0


@pytest.mark.anyio
async def test_litestar_plugin_a_receipt_link_on_a_failed_answer_returns_the_receipt(
    x402_local_stack: LocalStack,
) -> None:
    async with serving(upstream_failing_litestar(x402_local_stack, 502)) as base:
        response, receipt, spent = await pay_and_read_receipt(x402_local_stack, base, 5)
    assert response.status_code == 502
    assert (receipt["status"], receipt["amount"]) == ("not_charged", "0")
    assert spent == 0


@pytest.mark.anyio
async def test_a_receipt_shows_its_amounts_in_the_assets_units_too(
    x402_local_stack: LocalStack,
) -> None:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> JSONResponse:
        return JSONResponse(completion_json())

    app.add_middleware(X402Meter, **meter_options(x402_local_stack))
    async with serving(app) as base:
        response, receipt, spent = await pay_and_read_receipt(x402_local_stack, base, 5)
    assert response.status_code == 200
    assert receipt["status"] == "settled"
    decimals = x402_local_stack.asset_decimals
    for atomic, units in [("amount", "amount_units"), ("max_amount", "max_amount_units")]:
        assert Decimal(receipt[units]) * 10**decimals == int(receipt[atomic])
        assert len(receipt[units].split(".")[1]) == decimals  # every decimal shown
    assert spent == int(receipt["amount"])
    assert receipt["amount_units"] == f"0.{spent:06d}"  # the stack's token has 6 decimals
