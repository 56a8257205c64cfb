"""X402Meter on FastAPI, against the real local stack: 402, pay, stream, settle, receipt.

The payer is the official SDK (`x402HttpxClient` over an `x402Client` with a funded dev
account); the facilitator is a separate process spoken to over HTTP; settlement is a real
transaction on anvil, checked by reading token balances.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from eth_account import Account
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from x402.http.clients import x402HttpxClient
from x402.http.utils import encode_payment_signature_header
from x402.schemas import PaymentRequired

from tests.apps import (
    PRICE_ATOMIC,
    completion_json,
    max_amount,
    meter_options,
    sse_body,
    wants_stream,
)
from tests.openai_stream import COMPLETION_TOKENS, PROMPT_TOKENS, sse_events
from tests.sdk_payer import sdk_client, sign
from x402_meter import X402Meter
from x402_meter.devstack import LocalStack, token_balance
from x402_meter.devstack.asgi_server import serving

pytestmark = pytest.mark.anyio

EXPECTED_CHARGE = (PROMPT_TOKENS + COMPLETION_TOKENS) * PRICE_ATOMIC
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
MAX_AMOUNT = max_amount(CHAT)  # its prompt plus MAX_TOKENS of output


def chat_app(stack: LocalStack, **overrides: Any) -> tuple[FastAPI, dict[str, int]]:
    calls = {"count": 0}
    app = FastAPI()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> StreamingResponse | JSONResponse:
        calls["count"] += 1
        if wants_stream(await request.json()):
            return StreamingResponse(sse_body(), media_type="text/event-stream")
        return JSONResponse(completion_json())

    @app.get("/free")
    async def free() -> dict[str, str]:
        return {"free": "yes"}

    app.add_middleware(X402Meter, **meter_options(stack, **overrides))
    return app, calls


def payer(stack: LocalStack) -> tuple[str, str]:
    key = stack.payer_private_keys[3]
    return key, Account.from_key(key).address


async def receipt(client: httpx.AsyncClient, base: str, response: httpx.Response) -> dict[str, Any]:
    path = response.headers["x-payment-receipt"]
    answer = await client.get(f"{base}{path}", params={"wait": 20})
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    return body


@pytest.fixture
async def served(x402_local_stack: LocalStack) -> AsyncIterator[tuple[str, dict[str, int]]]:
    app, calls = chat_app(x402_local_stack)
    async with serving(app) as base:
        yield base, calls


async def test_unmetered_routes_pass_through(served: tuple[str, dict[str, int]]) -> None:
    base, _ = served
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{base}/free")
    assert response.json() == {"free": "yes"}
    assert "x-payment-receipt" not in response.headers


async def test_an_unpaid_request_gets_402_with_the_most_it_can_cost(
    x402_local_stack: LocalStack, served: tuple[str, dict[str, int]]
) -> None:
    base, calls = served
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{base}/v1/chat/completions", json=CHAT)

    assert response.status_code == 402
    required = PaymentRequired.model_validate_json(
        base64.b64decode(response.headers["payment-required"])
    )
    (upto,) = required.accepts
    assert (upto.scheme, upto.network, upto.amount) == (
        "upto",
        x402_local_stack.network,
        str(MAX_AMOUNT),
    )
    assert upto.pay_to == x402_local_stack.pay_to
    assert upto.extra["facilitatorAddress"] == x402_local_stack.facilitator_address
    body = response.json()
    assert body["x402Version"] == 1
    assert body["reason"] == "payment_required"
    assert body["accepts"][0]["maxAmountRequired"] == str(MAX_AMOUNT)
    assert calls["count"] == 0


async def test_a_paid_stream_arrives_whole_and_settles_exactly_price_times_tokens(
    x402_local_stack: LocalStack, served: tuple[str, dict[str, int]]
) -> None:
    stack = x402_local_stack
    base, _ = served
    key, address = payer(stack)
    w3 = stack.web3()
    before = token_balance(w3, stack.asset, address), token_balance(w3, stack.asset, stack.pay_to)

    async with x402HttpxClient(sdk_client(stack, key)) as client:
        response = await client.post(f"{base}/v1/chat/completions", json={**CHAT, "stream": True})
        assert response.status_code == 200
        assert response.content == b"".join(sse_events())
        paid = await receipt(client, base, response)

    assert paid["status"] == "settled", paid
    assert paid["amount"] == str(EXPECTED_CHARGE)
    assert (paid["input_tokens"], paid["output_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert paid["usage_source"] == "reported"
    assert paid["payer"] == address.lower()
    assert paid["transaction"].startswith("0x")
    after = token_balance(w3, stack.asset, address), token_balance(w3, stack.asset, stack.pay_to)
    assert after == (before[0] - EXPECTED_CHARGE, before[1] + EXPECTED_CHARGE)


async def test_a_json_answer_is_charged_from_its_usage(
    x402_local_stack: LocalStack, served: tuple[str, dict[str, int]]
) -> None:
    base, _ = served
    key, _ = payer(x402_local_stack)
    async with x402HttpxClient(sdk_client(x402_local_stack, key)) as client:
        response = await client.post(f"{base}/v1/chat/completions", json=CHAT)
        assert response.json() == completion_json()
        paid = await receipt(client, base, response)
    assert (paid["status"], paid["amount"]) == ("settled", str(EXPECTED_CHARGE))


async def paid_header(stack: LocalStack, base: str) -> dict[str, str]:
    """A valid payment header for the app at ``base``, signed by the SDK, not yet sent."""
    async with httpx.AsyncClient() as client:
        challenge = await client.post(f"{base}/v1/chat/completions", json=CHAT)
    required = PaymentRequired.model_validate_json(
        base64.b64decode(challenge.headers["payment-required"])
    )
    key, _ = payer(stack)
    payload = await sign(stack, key, required.accepts[0])
    return {"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)}


async def test_a_replayed_payment_is_refused(
    x402_local_stack: LocalStack, served: tuple[str, dict[str, int]]
) -> None:
    base, calls = served
    headers = await paid_header(x402_local_stack, base)
    async with httpx.AsyncClient() as client:
        first = await client.post(f"{base}/v1/chat/completions", json=CHAT, headers=headers)
        second = await client.post(f"{base}/v1/chat/completions", json=CHAT, headers=headers)
        await receipt(client, base, first)

    assert first.status_code == 200
    assert second.status_code == 402
    assert second.json()["reason"] == "payment_already_used"
    assert calls["count"] == 1


async def test_a_v2_payment_in_the_legacy_x_payment_header_is_accepted(
    x402_local_stack: LocalStack, served: tuple[str, dict[str, int]]
) -> None:
    base, _ = served
    headers = {"X-PAYMENT": (await paid_header(x402_local_stack, base))["PAYMENT-SIGNATURE"]}
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{base}/v1/chat/completions", json=CHAT, headers=headers)
        assert response.status_code == 200
        assert (await receipt(client, base, response))["status"] == "settled"


async def pay_for_other_terms(stack: LocalStack, base: str, **changes: Any) -> httpx.Response:
    """Pay CHAT with a real signature for the 402's terms changed by ``changes``."""
    async with httpx.AsyncClient() as client:
        challenge = await client.post(f"{base}/v1/chat/completions", json=CHAT)
        header = base64.b64decode(challenge.headers["payment-required"])
        accepted = PaymentRequired.model_validate_json(header).accepts[0]
        payload = await sign(stack, payer(stack)[0], accepted.model_copy(update=changes))
        signed = {"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)}
        return await client.post(f"{base}/v1/chat/completions", json=CHAT, headers=signed)


async def test_a_payment_for_less_than_the_maximum_is_refused_before_the_facilitator(
    x402_local_stack: LocalStack, served: tuple[str, dict[str, int]]
) -> None:
    base, calls = served
    response = await pay_for_other_terms(x402_local_stack, base, amount=str(MAX_AMOUNT - 1))
    assert response.status_code == 402
    assert response.json()["reason"] == "amount_too_low"
    assert "payment-required" in response.headers  # so the client can pay again, correctly
    assert calls["count"] == 0


async def test_an_authorization_too_close_to_its_deadline_is_refused_before_it_is_used(
    x402_local_stack: LocalStack, served: tuple[str, dict[str, int]]
) -> None:
    """An answer paid by it could not be settled before the deadline (``expiry_margin``)."""
    base, calls = served
    # The SDK signs a deadline of now + max_timeout_seconds; the margin is 20 s.
    response = await pay_for_other_terms(x402_local_stack, base, max_timeout_seconds=15)
    assert response.status_code == 402
    assert response.json()["reason"] == "payment_expires_too_soon"
    assert calls["count"] == 0


async def test_twenty_concurrent_copies_of_one_payment_serve_exactly_one_response(
    x402_local_stack: LocalStack, served: tuple[str, dict[str, int]]
) -> None:
    base, calls = served
    headers = await paid_header(x402_local_stack, base)
    statuses: list[int] = []
    reasons: list[str] = []

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=20)) as client:

        async def attempt() -> None:
            response = await client.post(f"{base}/v1/chat/completions", json=CHAT, headers=headers)
            statuses.append(response.status_code)
            if response.status_code == 402:
                reasons.append(response.json()["reason"])

        async with anyio.create_task_group() as tasks:
            for _ in range(20):
                tasks.start_soon(attempt)

    assert sorted(statuses) == [200] + [402] * 19
    assert set(reasons) == {"payment_already_used"}
    assert calls["count"] == 1


async def test_the_stream_is_not_buffered(x402_local_stack: LocalStack) -> None:
    """The app holds between two chunks; the client must see the first one before release."""
    first_chunk_seen = anyio.Event()
    app = FastAPI()

    async def gate(index: int) -> None:
        if index == 1:
            await first_chunk_seen.wait()

    @app.post("/v1/chat/completions")
    async def chat() -> StreamingResponse:
        return StreamingResponse(sse_body(gate), media_type="text/event-stream")

    app.add_middleware(X402Meter, **meter_options(x402_local_stack))
    key, _ = payer(x402_local_stack)
    async with serving(app) as base, x402HttpxClient(sdk_client(x402_local_stack, key)) as client:
        # A guard against a hang if the middleware ever buffers, not a timing assertion.
        with anyio.fail_after(60):
            async with client.stream("POST", f"{base}/v1/chat/completions", json=CHAT) as response:
                chunks = response.aiter_raw()
                first = await chunks.__anext__()
                assert first == next(iter(sse_events()))
                first_chunk_seen.set()
                rest = b"".join([chunk async for chunk in chunks])
        assert first + rest == b"".join(sse_events())
        assert (await receipt(client, base, response))["status"] == "settled"


async def test_an_error_response_is_not_charged(x402_local_stack: LocalStack) -> None:
    stack = x402_local_stack
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> JSONResponse:
        return JSONResponse(completion_json(), status_code=500)

    app.add_middleware(X402Meter, **meter_options(stack))
    key, address = payer(stack)
    before = token_balance(stack.web3(), stack.asset, address)
    async with serving(app) as base, x402HttpxClient(sdk_client(stack, key)) as client:
        response = await client.post(f"{base}/v1/chat/completions", json=CHAT)
        assert response.status_code == 500
        paid = await receipt(client, base, response)
    assert (paid["status"], paid["amount"]) == ("not_charged", "0")
    assert token_balance(stack.web3(), stack.asset, address) == before


async def test_an_unreachable_facilitator_gives_503_with_retry_after(
    x402_local_stack: LocalStack,
) -> None:
    app, calls = chat_app(x402_local_stack, facilitator_url="http://127.0.0.1:9")
    async with serving(app) as base, httpx.AsyncClient() as client:
        response = await client.post(f"{base}/v1/chat/completions", json=CHAT)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["reason"] == "facilitator_unavailable"
    assert calls["count"] == 0


async def test_unknown_receipts_are_404(served: tuple[str, dict[str, int]]) -> None:
    base, _ = served
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{base}/x402/receipts/doesnotexist0000000")
    assert response.status_code == 404
    assert response.json()["reason"] == "receipt_not_found"
