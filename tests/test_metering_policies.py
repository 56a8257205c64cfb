"""Prices by model, request shaping, ending at the authorized maximum, and compression,
end to end against the local stack."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.middleware.gzip import GZipMiddleware
from x402.http.clients import x402HttpxClient
from x402.schemas import PaymentRequired

from tests.apps import max_amount, meter_options, prompt_tokens
from tests.sdk_payer import sdk_client
from x402_meter import TokenPrice, X402Meter
from x402_meter.devstack import LocalStack
from x402_meter.devstack.asgi_server import serving
from x402_meter.devstack.stub_model import complete_chat, pieces, stream_chat
from x402_meter.pricing import PricedRequest, PriceTable

pytestmark = pytest.mark.anyio

TABLE = PriceTable(
    {"small": TokenPrice("0.000001", "0.000002"), "large": TokenPrice("0.00001", "0.00003")},
    default=TokenPrice.flat("0.000005"),
)


def chat_app(
    stack: LocalStack, received: list[dict[str, Any]] | None = None, **options: Any
) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Response:
        body = await request.json()
        if received is not None:
            received.append(body)
        if body.get("stream"):
            return StreamingResponse(stream_chat(body), media_type="text/event-stream")
        return JSONResponse(complete_chat(body))

    app.add_middleware(X402Meter, **meter_options(stack, **options))
    return app


async def challenge(base: str, body: dict[str, Any]) -> PaymentRequired:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{base}/v1/chat/completions", json=body)
    assert response.status_code == 402, response.text
    return PaymentRequired.model_validate_json(
        base64.b64decode(response.headers["payment-required"])
    )


async def paid(
    stack: LocalStack, base: str, body: dict[str, Any]
) -> tuple[httpx.Response, dict[str, Any]]:
    async with x402HttpxClient(
        sdk_client(stack, stack.payer_private_keys[1]), timeout=60
    ) as client:
        response = await client.post(f"{base}/v1/chat/completions", json=body)
        receipt = (
            await client.get(base + response.headers["x-payment-receipt"], params={"wait": 20})
        ).json()
    return response, receipt


def question(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "What is x402?"}], **extra}


async def test_a_price_table_asks_and_charges_the_requested_models_price(
    x402_local_stack: LocalStack,
) -> None:
    async with serving(chat_app(x402_local_stack, price_per_token=TABLE, max_tokens=1000)) as base:
        small = await challenge(base, question("small"))
        large = await challenge(base, question("large-2025-01-01"))  # priced by its prefix
        other = await challenge(base, question("anything-else"))
        _, receipt = await paid(x402_local_stack, base, question("large"))
    prompt = prompt_tokens(question("small"))  # the three questions' prompts are alike
    assert [r.accepts[0].amount for r in (small, large, other)] == [
        str(1000 * 2 + prompt * 1),  # the output at its highest price, the prompt at input's
        str(1000 * 30 + prompt * 10),
        str((1000 + prompt) * 5),
    ]
    usage = complete_chat(question("large"))["usage"]
    assert receipt["amount"] == str(usage["prompt_tokens"] * 10 + usage["completion_tokens"] * 30)


async def test_a_model_without_a_price_is_refused(x402_local_stack: LocalStack) -> None:
    table = PriceTable({"small": TokenPrice.flat("0.000001")})
    async with (
        serving(chat_app(x402_local_stack, price_per_token=table)) as base,
        httpx.AsyncClient() as client,
    ):
        response = await client.post(f"{base}/v1/chat/completions", json=question("unknown"))
    assert (response.status_code, response.json()["reason"]) == (400, "unknown_model")


async def test_a_price_function_sees_the_request(x402_local_stack: LocalStack) -> None:
    seen: list[PricedRequest] = []

    def price(request: PricedRequest) -> TokenPrice:
        seen.append(request)
        return TokenPrice.flat("0.000003" if request.model == "premium" else "0.000001")

    async with serving(chat_app(x402_local_stack, price_per_token=price, max_tokens=1000)) as base:
        offered = await challenge(base, question("premium"))
    assert offered.accepts[0].amount == str((1000 + prompt_tokens(question("premium"))) * 3)
    assert (seen[0].method, seen[0].path, seen[0].model) == (
        "POST",
        "/v1/chat/completions",
        "premium",
    )


async def test_shaping_asks_for_usage_hides_it_and_clamps_the_output(
    x402_local_stack: LocalStack,
) -> None:
    received: list[dict[str, Any]] = []
    app = chat_app(x402_local_stack, received, shape_requests=True, max_tokens=100)
    body = question("small", stream=True, max_completion_tokens=5000)
    async with serving(app) as base:
        response, receipt = await paid(x402_local_stack, base, body)

    forwarded = received[-1]
    assert forwarded["stream_options"] == {"include_usage": True}
    assert forwarded["max_completion_tokens"] == 100  # the payment covers the prompt on top
    assert b'"usage"' not in response.content  # the client did not ask for the usage chunk
    assert response.content.endswith(b"data: [DONE]\n\n")
    assert receipt["usage_source"] == "reported"


async def long_answer(body: dict[str, Any]) -> AsyncIterator[bytes]:
    async for chunk in stream_chat({**body, "stream_options": {}}, pieces() * 20):  # no usage
        yield chunk


@pytest.mark.parametrize("policy", ["end", "finish"])
async def test_a_stream_reaching_the_authorized_maximum(
    x402_local_stack: LocalStack, policy: str
) -> None:
    app = FastAPI()
    sent = {"chunks": 0}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        body = await request.json()

        async def counted() -> AsyncIterator[bytes]:
            async for chunk in long_answer(body):
                sent["chunks"] += 1
                yield chunk

        return StreamingResponse(counted(), media_type="text/event-stream")

    app.add_middleware(X402Meter, **meter_options(x402_local_stack, max_tokens=200, on_cap=policy))
    async with serving(app) as base:
        response, receipt = await paid(x402_local_stack, base, question("m", stream=True))
    full = sum(1 for _ in pieces() * 20) + 3
    maximum = max_amount(question("m", stream=True), max_tokens=200)
    assert receipt["amount"] == receipt["max_amount"] == str(maximum)
    if policy == "end":
        assert sent["chunks"] < full  # the app was stopped
        assert not response.content.endswith(b"data: [DONE]\n\n")
    else:
        assert sent["chunks"] == full
        assert response.content.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("order", ["gzip inside the meter", "gzip outside the meter"])
async def test_compressed_answers_are_metered_from_their_usage(
    x402_local_stack: LocalStack, order: str
) -> None:
    inner = FastAPI()

    @inner.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        answer = complete_chat(await request.json())
        answer["choices"][0]["message"]["content"] *= 20  # big enough for GZipMiddleware
        return JSONResponse(answer)

    options = meter_options(x402_local_stack)
    if order == "gzip inside the meter":
        app: Any = X402Meter(GZipMiddleware(inner, minimum_size=10), **options)
    else:
        app = GZipMiddleware(X402Meter(inner, **options), minimum_size=10)
    async with serving(app) as base:
        response, receipt = await paid(x402_local_stack, base, question("m"))
    assert response.headers["content-encoding"] == "gzip"
    usage = complete_chat(question("m"))["usage"]
    assert receipt["usage_source"] == "reported"
    assert receipt["amount"] == str((usage["prompt_tokens"] + usage["completion_tokens"]) * 2)
