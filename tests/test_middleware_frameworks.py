"""The same middleware on Starlette, FastAPI (with @metered), Litestar and a bare ASGI app."""

from __future__ import annotations

import base64
from copy import deepcopy
from typing import Any

import httpx
import pytest
from eth_account import Account
from fastapi import FastAPI
from litestar import Litestar, Router, post
from litestar.response import Stream
from litestar.types import Receive as LitestarReceive
from litestar.types import Scope as LitestarScope
from litestar.types import Send as LitestarSend
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from x402.http.clients import x402HttpxClient
from x402.schemas import PaymentRequired

from tests.apps import PRICE_ATOMIC, max_amount, meter_options, sse_body
from tests.openai_stream import COMPLETION_TOKENS, PROMPT_TOKENS, sse_events
from tests.sdk_payer import sdk_client
from x402_meter import X402Meter, metered
from x402_meter.devstack import LocalStack, token_balance
from x402_meter.devstack.asgi_server import serving
from x402_meter.integrations.litestar import X402MeterMiddleware, X402MeterPlugin
from x402_meter.store import LedgerState, MemoryStore

pytestmark = pytest.mark.anyio

TOKENS = PROMPT_TOKENS + COMPLETION_TOKENS
ROUTE_PRICE = "0.00001"  # 10 atomic units per token, set with @metered
ROUTE_PRICE_ATOMIC = 10
ROUTE_MAX_TOKENS = 512
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": True}
ROUTE_MAXIMUM = max_amount(CHAT, ROUTE_MAX_TOKENS, ROUTE_PRICE_ATOMIC)


async def pay_and_stream(
    stack: LocalStack, key_index: int, url: str
) -> tuple[PaymentRequired, dict[str, Any]]:
    """Fetch the 402, then pay with the SDK; return the challenge and the settled receipt."""
    key = stack.payer_private_keys[key_index]
    payer = Account.from_key(key).address
    before = token_balance(stack.web3(), stack.asset, payer)
    async with httpx.AsyncClient() as plain:
        challenge = await plain.post(url, json=CHAT)
    assert challenge.status_code == 402
    required = PaymentRequired.model_validate_json(
        base64.b64decode(challenge.headers["payment-required"])
    )
    async with x402HttpxClient(sdk_client(stack, key)) as client:
        response = await client.post(url, json=CHAT)
        assert response.status_code == 200
        assert response.content == b"".join(sse_events())
        base = url.split("/", 3)[:3]
        receipt = (
            await client.get(
                "/".join(base) + response.headers["x-payment-receipt"], params={"wait": 20}
            )
        ).json()
    assert receipt["status"] == "settled", receipt
    spent = before - token_balance(stack.web3(), stack.asset, payer)
    assert spent == int(receipt["amount"])
    return required, receipt


async def test_starlette_with_metered_endpoint(x402_local_stack: LocalStack) -> None:
    @metered(price_per_token=ROUTE_PRICE, max_tokens=ROUTE_MAX_TOKENS)
    async def answer(request: Request) -> StreamingResponse:
        return StreamingResponse(sse_body(), media_type="text/event-stream")

    async def free(request: Request) -> StreamingResponse:
        return StreamingResponse(sse_body(), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/v1/answer", answer, methods=["POST"]),
            Route("/free", free, methods=["POST"]),
        ]
    )
    app.add_middleware(X402Meter, **meter_options(x402_local_stack, routes=None))
    async with serving(app) as base:
        required, receipt = await pay_and_stream(x402_local_stack, 4, f"{base}/v1/answer")
        async with httpx.AsyncClient() as client:
            assert (await client.post(f"{base}/free")).status_code == 200
    assert required.accepts[0].amount == str(ROUTE_MAXIMUM)
    assert receipt["amount"] == str(TOKENS * ROUTE_PRICE_ATOMIC)


async def test_fastapi_route_table_and_metered_endpoint_side_by_side(
    x402_local_stack: LocalStack,
) -> None:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> StreamingResponse:
        return StreamingResponse(sse_body(), media_type="text/event-stream")

    @app.post("/v1/answer")
    @metered(price_per_token=ROUTE_PRICE, max_tokens=ROUTE_MAX_TOKENS)
    async def answer() -> StreamingResponse:
        return StreamingResponse(sse_body(), media_type="text/event-stream")

    app.add_middleware(X402Meter, **meter_options(x402_local_stack))
    async with serving(app) as base:
        table_required, table_receipt = await pay_and_stream(
            x402_local_stack, 4, f"{base}/v1/chat/completions"
        )
        route_required, route_receipt = await pay_and_stream(
            x402_local_stack, 4, f"{base}/v1/answer"
        )
    assert table_receipt["amount"] == str(TOKENS * PRICE_ATOMIC)
    assert route_required.accepts[0].amount == str(ROUTE_MAXIMUM)
    assert route_receipt["amount"] == str(TOKENS * ROUTE_PRICE_ATOMIC)
    assert table_required.accepts[0].amount != route_required.accepts[0].amount


@post("/v1/chat/completions", status_code=200)
async def litestar_chat() -> Stream:
    return Stream(sse_body(), media_type="text/event-stream")


@post("/v1/answer", status_code=200)
@metered(price_per_token=ROUTE_PRICE, max_tokens=ROUTE_MAX_TOKENS)
async def litestar_answer() -> Stream:
    return Stream(sse_body(), media_type="text/event-stream")


async def test_litestar_plugin_meters_table_routes_and_metered_handlers(
    x402_local_stack: LocalStack,
) -> None:
    app = Litestar(
        route_handlers=[litestar_chat, litestar_answer],
        plugins=[X402MeterPlugin(**meter_options(x402_local_stack))],
    )
    async with serving(app) as base:
        _, table_receipt = await pay_and_stream(x402_local_stack, 5, f"{base}/v1/chat/completions")
        route_required, route_receipt = await pay_and_stream(
            x402_local_stack, 5, f"{base}/v1/answer"
        )
    assert table_receipt["amount"] == str(TOKENS * PRICE_ATOMIC)
    assert route_required.accepts[0].amount == str(ROUTE_MAXIMUM)
    assert route_receipt["amount"] == str(TOKENS * ROUTE_PRICE_ATOMIC)


async def test_litestar_routes_given_one_store_object_write_to_that_store(
    x402_local_stack: LocalStack,
) -> None:
    """The plugin's meter and a ``Router``'s own meter (Litestar deep-copies routers) both
    record their payments in the store object they were given."""

    @post("/v1/chat/completions", status_code=200)
    async def chat() -> Stream:
        return Stream(sse_body(), media_type="text/event-stream")

    @post("/v1/answer", status_code=200)
    @metered(price_per_token=ROUTE_PRICE, max_tokens=ROUTE_MAX_TOKENS)
    async def answer() -> Stream:
        return Stream(sse_body(), media_type="text/event-stream")

    store = MemoryStore()
    options = meter_options(x402_local_stack, store=store)
    router_meter = X402MeterMiddleware(**{**options, "routes": ["POST /flat/v1/chat/completions"]})
    flat = Router("/flat", route_handlers=[chat], middleware=[router_meter])
    app = Litestar(route_handlers=[answer, flat], plugins=[X402MeterPlugin(**options)])
    async with serving(app) as base:
        _, answer_receipt = await pay_and_stream(x402_local_stack, 5, f"{base}/v1/answer")
        _, flat_receipt = await pay_and_stream(
            x402_local_stack, 5, f"{base}/flat/v1/chat/completions"
        )
    rows = await store.list()
    assert [row.state for row in rows] == [LedgerState.SETTLED] * 2
    assert {row.transaction for row in rows} == {
        answer_receipt["transaction"],
        flat_receipt["transaction"],
    }


def test_a_deep_copied_litestar_router_keeps_the_store_object() -> None:
    @post("/v1/chat/completions", status_code=200)
    async def chat() -> Stream:
        return Stream(sse_body(), media_type="text/event-stream")

    store = MemoryStore()
    meter = X402MeterMiddleware(pay_to="0x" + "33" * 20, price_per_token="0.000001", store=store)
    copied = deepcopy(Router("/flat", route_handlers=[chat], middleware=[meter]))
    assert copied.middleware == [meter]

    async def endpoint(scope: LitestarScope, receive: LitestarReceive, send: LitestarSend) -> None:
        pass  # pragma: no cover - never called

    built = meter(app=endpoint)
    assert isinstance(built, X402Meter)
    assert built.runtime.store is store


async def test_a_whole_litestar_app_wrapped_as_plain_asgi(x402_local_stack: LocalStack) -> None:
    app = X402Meter(
        Litestar(route_handlers=[litestar_answer]), **meter_options(x402_local_stack, routes=None)
    )
    async with serving(app) as base:
        _, receipt = await pay_and_stream(x402_local_stack, 5, f"{base}/v1/answer")
    assert receipt["amount"] == str(TOKENS * ROUTE_PRICE_ATOMIC)


async def test_a_bare_asgi_app(x402_local_stack: LocalStack) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        async for event in sse_body():
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    metered_app = X402Meter(app, **meter_options(x402_local_stack))
    async with serving(metered_app) as base:
        _, receipt = await pay_and_stream(x402_local_stack, 4, f"{base}/v1/chat/completions")
    assert receipt["amount"] == str(TOKENS * PRICE_ATOMIC)
