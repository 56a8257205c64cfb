"""Bad input, disconnects and failures: never a 5xx from the middleware, never a free answer,
and a charge that matches what was actually served."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from x402.client_base import prefer_scheme
from x402.http.clients import x402HttpxClient
from x402.http.utils import decode_payment_response_header

from tests.apps import PRICE_ATOMIC, completion_json, max_amount, meter_options, sse_body
from tests.openai_stream import PIECES, sse_events
from tests.sdk_payer import sdk_client
from x402_meter import MemoryStore, X402Meter
from x402_meter.devstack import LocalStack
from x402_meter.devstack.asgi_server import serving
from x402_meter.metering import estimate_tokens

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


class Calls:
    count = 0


_COUNTED_APPS: dict[str, tuple[X402Meter, MemoryStore]] = {}


def counted_app(stack: LocalStack, calls: type[Calls]) -> tuple[X402Meter, MemoryStore]:
    """One metered app (and its store) per stack, reused by every hypothesis example."""
    if stack.facilitator_url not in _COUNTED_APPS:

        async def app(scope: Any, receive: Any, send: Any) -> None:
            calls.count += 1
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"served"})

        store = MemoryStore()
        meter = X402Meter(app, **meter_options(stack, store=store))
        _COUNTED_APPS[stack.facilitator_url] = meter, store
    return _COUNTED_APPS[stack.facilitator_url]


# At least 10,000 cases in CI; fewer while iterating locally.
FUZZ_EXAMPLES = int(
    os.environ.get("X402_FUZZ_EXAMPLES", "10000" if os.environ.get("CI") else "500")
)

header_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300),
    st.binary(max_size=400).map(lambda raw: base64.b64encode(raw).decode()),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=30),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
        ),
        max_leaves=20,
    ).map(lambda value: base64.b64encode(json.dumps(value).encode()).decode()),
    st.builds(
        lambda version, accepted, payload: base64.b64encode(
            json.dumps({"x402Version": version, "accepted": accepted, "payload": payload}).encode()
        ).decode(),
        st.sampled_from([1, 2, 3]),
        st.dictionaries(
            st.sampled_from(
                ["scheme", "network", "asset", "amount", "payTo", "maxTimeoutSeconds", "extra"]
            ),
            st.text(max_size=20) | st.integers(),
        ),
        st.dictionaries(
            st.sampled_from(["permit2Authorization", "authorization", "signature"]),
            st.text(max_size=20),
        ),
    ),
)


bodies = st.binary(max_size=300) | st.builds(
    lambda value: json.dumps(value).encode(),
    st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4),
)


@pytest.mark.anyio
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=header_values, name=st.sampled_from(["PAYMENT-SIGNATURE", "X-PAYMENT"]), body=bodies)
async def test_random_headers_and_bodies_never_get_a_5xx_a_free_answer_or_a_record(
    x402_local_stack: LocalStack, value: str, name: str, body: bytes
) -> None:
    Calls.count = 0
    app, store = counted_app(x402_local_stack, Calls)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://meter.test") as client:
        response = await client.post("/v1/chat/completions", content=body, headers={name: value})
    assert response.status_code in (400, 402), response.text
    assert response.json()["reason"]
    assert Calls.count == 0
    assert store.reserved_keys() == frozenset()
    assert await store.list() == []


@pytest.mark.anyio
async def test_an_oversized_header_is_refused_with_its_reason(x402_local_stack: LocalStack) -> None:
    transport = httpx.ASGITransport(app=counted_app(x402_local_stack, Calls)[0])
    async with httpx.AsyncClient(transport=transport, base_url="http://meter.test") as client:
        response = await client.post(
            "/v1/chat/completions", headers={"PAYMENT-SIGNATURE": "A" * 9000}
        )
    assert (response.status_code, response.json()["reason"]) == (400, "payment_header_too_large")


async def receipt_of(client: httpx.AsyncClient, base: str, path: str) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get(f"{base}{path}", params={"wait": 20})).json()
    return body


@pytest.mark.anyio
async def test_a_client_that_leaves_mid_stream_pays_for_what_it_was_sent(
    x402_local_stack: LocalStack,
) -> None:
    never = anyio.Event()
    app = FastAPI()

    async def gate(index: int) -> None:
        if index == 3:  # role chunk, "The ", "answer " go out; then the app waits forever
            await never.wait()

    @app.post("/v1/chat/completions")
    async def chat() -> StreamingResponse:
        return StreamingResponse(sse_body(gate), media_type="text/event-stream")

    app.add_middleware(X402Meter, **meter_options(x402_local_stack))
    events = list(sse_events())
    key = x402_local_stack.payer_private_keys[0]
    async with serving(app) as base, x402HttpxClient(sdk_client(x402_local_stack, key)) as client:
        with anyio.fail_after(60):  # a guard against a hang, not a timing assertion
            async with client.stream("POST", f"{base}/v1/chat/completions", json=CHAT) as response:
                received = b""
                async for chunk in response.aiter_raw():
                    received += chunk
                    if received == b"".join(events[:3]):
                        break
                path = response.headers["x-payment-receipt"]
        receipt = await receipt_of(client, base, path)

    # The stream never reported usage: both sides are estimated with the tokenizer,
    # the answer from what was forwarded, the prompt from the request body.
    output_tokens = estimate_tokens("".join(PIECES[:2]))
    expected_tokens = output_tokens + estimate_tokens("hi")
    assert receipt["status"] == "settled", receipt
    assert receipt["usage_source"] == "estimated"
    assert receipt["output_tokens"] == output_tokens
    assert receipt["input_tokens"] == estimate_tokens("hi")
    assert receipt["amount"] == str(expected_tokens * PRICE_ATOMIC)


@pytest.mark.anyio
async def test_an_app_that_fails_mid_stream_charges_what_was_sent(
    x402_local_stack: LocalStack,
) -> None:
    app = FastAPI()

    async def explode(index: int) -> None:
        if index == 3:
            raise RuntimeError("upstream went away")

    @app.post("/v1/chat/completions")
    async def chat() -> StreamingResponse:
        return StreamingResponse(sse_body(explode), media_type="text/event-stream")

    app.add_middleware(X402Meter, **meter_options(x402_local_stack))
    key = x402_local_stack.payer_private_keys[0]
    async with serving(app) as base, x402HttpxClient(sdk_client(x402_local_stack, key)) as client:
        async with client.stream("POST", f"{base}/v1/chat/completions", json=CHAT) as response:
            path = response.headers["x-payment-receipt"]
            with pytest.raises(httpx.RemoteProtocolError):  # the stream is cut, not completed
                await response.aread()
        receipt = await receipt_of(client, base, path)
    # The stream never reported usage: both sides are estimated with the tokenizer,
    # the answer from what was forwarded, the prompt from the request body.
    output_tokens = estimate_tokens("".join(PIECES[:2]))
    expected_tokens = output_tokens + estimate_tokens("hi")
    assert (receipt["status"], receipt["amount"]) == (
        "settled",
        str(expected_tokens * PRICE_ATOMIC),
    )


@pytest.mark.anyio
async def test_an_app_that_fails_before_answering_is_not_charged(
    x402_local_stack: LocalStack,
) -> None:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> JSONResponse:
        raise RuntimeError("model crashed")

    app.add_middleware(X402Meter, **meter_options(x402_local_stack))
    key = x402_local_stack.payer_private_keys[0]
    async with serving(app) as base, x402HttpxClient(sdk_client(x402_local_stack, key)) as client:
        response = await client.post(f"{base}/v1/chat/completions", json=CHAT)
    assert response.status_code == 500
    assert "x-payment-receipt" not in response.headers  # the app never started its answer


@pytest.mark.anyio
async def test_settle_before_response_puts_the_settlement_in_payment_response(
    x402_local_stack: LocalStack,
) -> None:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> JSONResponse:
        return JSONResponse(completion_json())

    app.add_middleware(X402Meter, **meter_options(x402_local_stack, settle_before_response=True))
    key = x402_local_stack.payer_private_keys[0]
    async with serving(app) as base, x402HttpxClient(sdk_client(x402_local_stack, key)) as client:
        response = await client.post(f"{base}/v1/chat/completions", json=CHAT)
        receipt = await receipt_of(client, base, response.headers["x-payment-receipt"])
    assert response.json() == completion_json()
    settled = decode_payment_response_header(response.headers["payment-response"])
    assert settled.success
    assert settled.transaction == receipt["transaction"]
    assert settled.amount == receipt["amount"] == str(173 * PRICE_ATOMIC)


@pytest.mark.anyio
async def test_exact_payments_charge_the_flat_maximum(x402_local_stack: LocalStack) -> None:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> JSONResponse:
        return JSONResponse(completion_json())

    app.add_middleware(X402Meter, **meter_options(x402_local_stack, schemes=("upto", "exact")))
    key = x402_local_stack.payer_private_keys[0]
    payer = sdk_client(x402_local_stack, key).register_policy(prefer_scheme("exact"))
    async with serving(app) as base, x402HttpxClient(payer) as client:
        response = await client.post(f"{base}/v1/chat/completions", json=CHAT)
        receipt = await receipt_of(client, base, response.headers["x-payment-receipt"])
    assert (receipt["scheme"], receipt["status"]) == ("exact", "settled")
    assert receipt["amount"] == str(max_amount(CHAT))  # the whole maximum: prompt and output
