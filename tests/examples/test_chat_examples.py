"""The FastAPI and Litestar examples, paid through the official ``openai`` package.

Every test runs against both apps (``example`` is parametrized), on the real local stack:
the payer signs with x402-meter's paying client, the facilitator verifies and settles over
HTTP, and the balances on the chain move by exactly what the receipt says.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from x402.schemas import PaymentRequired

from examples.common.upstream import PAYMENT_ANSWER, StubUpstream, stub_answer
from tests.examples.conftest import Example, serve_example
from x402_meter.client import Receipt
from x402_meter.devstack import LocalStack
from x402_meter.devstack.asgi_server import serving

pytestmark = pytest.mark.anyio

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is x402, in two sentences?"}
]
PER_TOKEN = {"local-stub": 2, "local-stub-pro": 8}  # atomic units: X402_PRICES' defaults
FLAT = {"local-stub": 1_000, "local-stub-pro": 4_000}  # X402_FLAT_PRICES' defaults
PREMIUM_PER_TOKEN, PREMIUM_MAX_TOKENS = 10, 512  # X402_PREMIUM_PRICE 0.00001
MAX_TOKENS = 4096


def llm(example: Example, http: httpx.AsyncClient, prefix: str = "/v1") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{example.base}{prefix}", api_key="x402", http_client=http)


async def streamed_text(stream: openai.AsyncStream[Any]) -> str:
    return "".join(
        [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    )


async def challenge(example: Example, path: str, model: str) -> PaymentRequired:
    async with httpx.AsyncClient() as plain:
        response = await plain.post(f"{example.base}{path}", json={"model": model, "messages": []})
    assert response.status_code == 402
    return PaymentRequired.model_validate_json(
        base64.b64decode(response.headers["payment-required"])
    )


def settled_amount(receipt: Receipt, per_token: int) -> int:
    """The receipt's amount, once it is checked to be settled at ``per_token`` x its tokens."""
    assert receipt.status == "settled", receipt
    assert receipt.input_tokens is not None
    assert receipt.output_tokens is not None
    assert receipt.amount == (receipt.input_tokens + receipt.output_tokens) * per_token
    assert receipt.usage_source == "reported"
    assert receipt.transaction is not None
    assert receipt.transaction.startswith("0x")
    return receipt.amount


async def test_an_unpaid_chat_is_challenged_for_the_most_the_model_can_cost(
    example: Example,
) -> None:
    required = await challenge(example, "/v1/chat/completions", "local-stub-pro")
    # upto first; the FastAPI example also offers a session on the local chain, same maximum
    schemes = ["upto", "batch-settlement"] if example.framework == "fastapi" else ["upto"]
    assert [offer.scheme for offer in required.accepts] == schemes
    for offer in required.accepts:
        assert offer.amount == str(MAX_TOKENS * PER_TOKEN["local-stub-pro"])
        assert offer.pay_to == example.seller
        assert offer.asset == example.asset.address


async def test_a_streamed_chat_is_charged_its_models_price_for_the_tokens_it_used(
    example: Example,
) -> None:
    before = example.balances()
    async with example.client() as http:
        stream = await llm(example, http).chat.completions.create(
            model="local-stub-pro", messages=QUESTION, stream=True
        )
        text = await streamed_text(stream)
        receipt = await http.receipt(wait=20)

    assert text == stub_answer({"messages": QUESTION})
    amount = settled_amount(receipt, PER_TOKEN["local-stub-pro"])
    assert receipt.payer == example.payer.address.lower()
    assert example.balances() == (before[0] - amount, before[1] + amount)


async def test_a_json_chat_through_the_sync_openai_client_is_charged_from_its_usage(
    example: Example,
) -> None:
    before = example.balances()

    def ask() -> tuple[str | None, Receipt]:
        with example.sync_client() as http:
            client = openai.OpenAI(base_url=f"{example.base}/v1", api_key="x402", http_client=http)
            answer = client.chat.completions.create(model="local-stub", messages=QUESTION)
            return answer.choices[0].message.content, http.receipt(wait=20)

    content, receipt = await anyio.to_thread.run_sync(ask)

    assert content == stub_answer({"messages": QUESTION})
    amount = settled_amount(receipt, PER_TOKEN["local-stub"])
    assert example.balances() == (before[0] - amount, before[1] + amount)


async def test_the_flat_priced_route_takes_the_models_price_with_exact(
    example: Example,
) -> None:
    required = await challenge(example, "/flat/v1/chat/completions", "local-stub-pro")
    assert [(o.scheme, o.amount) for o in required.accepts] == [("exact", "4000")]
    before = example.balances()
    async with example.client() as http:
        stream = await llm(example, http, "/flat/v1").chat.completions.create(
            model="local-stub-pro", messages=QUESTION, stream=True
        )
        await streamed_text(stream)
        receipt = await http.receipt(wait=20)

    assert (receipt.status, receipt.scheme, receipt.amount) == (
        "settled",
        "exact",
        FLAT["local-stub-pro"],
    )
    assert example.balances() == (before[0] - 4000, before[1] + 4000)


async def test_the_metered_premium_route_has_its_own_price_and_cap(example: Example) -> None:
    required = await challenge(example, "/premium/v1/chat/completions", "local-stub")
    assert required.accepts[0].amount == str(PREMIUM_MAX_TOKENS * PREMIUM_PER_TOKEN)
    before = example.balances()
    async with example.client() as http:
        completion = await llm(example, http, "/premium/v1").chat.completions.create(
            model="local-stub", messages=[{"role": "user", "content": "What did this cost?"}]
        )
        receipt = await http.receipt(wait=20)

    assert completion.choices[0].message.content == PAYMENT_ANSWER
    amount = settled_amount(receipt, PREMIUM_PER_TOKEN)
    assert example.balances() == (before[0] - amount, before[1] + amount)


async def test_the_models_and_their_prices_are_listed_for_free(example: Example) -> None:
    async with httpx.AsyncClient() as plain:
        response = await plain.get(f"{example.base}/v1/models")
    assert response.status_code == 200
    assert {m["id"]: m["x402"] for m in response.json()["data"]} == {
        "local-stub": {"price_per_token": "0.000002", "max_tokens": 4096, "flat_price": "0.001"},
        "local-stub-pro": {
            "price_per_token": "0.000008",
            "max_tokens": 4096,
            "flat_price": "0.004",
        },
    }


async def test_a_model_without_a_price_is_refused_before_any_payment(example: Example) -> None:
    async with httpx.AsyncClient() as plain:
        response = await plain.post(
            f"{example.base}/v1/chat/completions", json={"model": "gpt-5", "messages": QUESTION}
        )
    assert response.status_code == 400
    assert response.json()["reason"] == "unknown_model"


def openai_compatible_server(requests: list[Request]) -> Starlette:
    """An unmetered OpenAI-compatible server (the stub model), remembering what it was sent."""
    stub = StubUpstream()

    async def chat(request: Request) -> StreamingResponse:
        requests.append(request)
        answer = await stub.chat_completions(await request.body())
        return StreamingResponse(answer.body, answer.status_code, media_type=answer.media_type)

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture(params=["fastapi", "litestar"])
async def proxied(
    request: pytest.FixtureRequest, x402_local_stack: LocalStack
) -> AsyncIterator[tuple[Example, list[Request]]]:
    """An example whose upstream is ``UPSTREAM_BASE_URL``: another server, over HTTP."""
    received: list[Request] = []
    async with (
        serving(openai_compatible_server(received)) as upstream,
        serve_example(
            request.param,
            x402_local_stack,
            upstream_base_url=f"{upstream}/v1",
            upstream_api_key="sk-upstream",
        ) as example,
    ):
        yield example, received


async def test_an_upstream_server_is_streamed_through_and_metered(
    proxied: tuple[Example, list[Request]],
) -> None:
    example, received = proxied
    before = example.balances()
    async with example.client() as http:
        stream = await llm(example, http).chat.completions.create(
            model="local-stub", messages=QUESTION, stream=True
        )
        text = await streamed_text(stream)
        receipt = await http.receipt(wait=20)

    assert text == stub_answer({"messages": QUESTION})
    (upstream_request,) = received
    assert upstream_request.headers["authorization"] == "Bearer sk-upstream"  # not the caller's
    amount = settled_amount(receipt, PER_TOKEN["local-stub"])
    assert example.balances() == (before[0] - amount, before[1] + amount)
