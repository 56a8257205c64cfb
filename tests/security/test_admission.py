"""What a request can cost is what its 402 asks for, and reading it costs unpaid callers
nothing they can hold on to (findings 4, 5 and 7).

Real uvicorn servers, the local chain, the facilitator over HTTP and the official SDK payer.
Each test says how it failed on main before the fix (875f48c).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from x402.http.clients import x402HttpxClient
from x402.http.utils import encode_payment_signature_header
from x402.schemas import PaymentRequired

from tests.apps import PRICE_ATOMIC, max_amount, meter_options, prompt_tokens
from tests.examples.conftest import new_funded_payer
from tests.sdk_payer import sdk_client, sign
from x402_meter import PriceTable, TokenPrice, X402Meter
from x402_meter.devstack import LocalStack
from x402_meter.devstack.asgi_server import serving
from x402_meter.devstack.stub_model import complete_chat, stream_chat

pytestmark = pytest.mark.anyio

LONG_PROMPT: Final = "0123456789" * 40_500  # 405 KB; digits count as one token per 3
CHEAP: Final = TokenPrice.flat("0.000001")
DEAR: Final = TokenPrice.flat("0.0001")


class Served:
    """A metered chat app, served, that records what reached it."""

    def __init__(self, base: str, received: list[dict[str, Any]]) -> None:
        self.base = base
        self.received = received

    @property
    def url(self) -> str:
        return f"{self.base}/v1/chat/completions"


@asynccontextmanager
async def chat_server(
    stack: LocalStack, *, cache_control: str | None = None, **options: Any
) -> AsyncIterator[Served]:
    app = FastAPI()
    received: list[dict[str, Any]] = []

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Response:
        body = await request.json()
        received.append(body)
        headers = {"cache-control": cache_control} if cache_control else None
        if body.get("stream"):
            return StreamingResponse(
                stream_chat(body), media_type="text/event-stream", headers=headers
            )
        return JSONResponse(complete_chat(body), headers=headers)

    app.add_middleware(X402Meter, **meter_options(stack, **options))
    async with serving(app) as base:
        yield Served(base, received)


def offered_amount(response: httpx.Response) -> int:
    required = PaymentRequired.model_validate_json(
        base64.b64decode(response.headers["payment-required"])
    )
    return int(required.accepts[0].amount)


async def test_a_long_prompt_is_asked_for_and_charged_in_full(
    x402_local_stack: LocalStack,
) -> None:
    """Finding 4. On main a 405 KB prompt was offered for 8,192 units (4,096 tokens at 2)
    whatever its length, and the charge was capped there: the seller's upstream counted
    ~100k prompt tokens and it collected 4%. Now the 402 covers the prompt, a payment for
    main's amount is refused before the app runs, and the charge is the whole cost."""
    body = {"model": "m", "messages": [{"role": "user", "content": LONG_PROMPT}]}
    key = new_funded_payer(x402_local_stack).key.hex()
    async with chat_server(x402_local_stack) as served, httpx.AsyncClient(timeout=60) as plain:
        challenge = await plain.post(served.url, json=body)
        assert challenge.status_code == 402
        maximum = offered_amount(challenge)
        assert maximum == max_amount(body) > prompt_tokens(body) * PRICE_ATOMIC

        accepted = PaymentRequired.model_validate_json(
            base64.b64decode(challenge.headers["payment-required"])
        ).accepts[0]
        mains = accepted.model_copy(update={"amount": str(4096 * PRICE_ATOMIC)})
        payload = await sign(x402_local_stack, key, mains)
        cheap = await plain.post(
            served.url,
            json=body,
            headers={"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)},
        )
        assert (cheap.status_code, cheap.json()["reason"]) == (402, "amount_too_low")
        assert served.received == []

        async with x402HttpxClient(sdk_client(x402_local_stack, key), timeout=60) as client:
            paid = await client.post(served.url, json=body)
            receipt = (
                await client.get(
                    served.base + paid.headers["x-payment-receipt"], params={"wait": 20}
                )
            ).json()
    usage = complete_chat(body)["usage"]
    assert paid.status_code == 200
    assert receipt["status"] == "settled"
    assert receipt["amount"] == str(usage["total_tokens"] * PRICE_ATOMIC)  # not capped
    assert usage["prompt_tokens"] > 4096


async def test_a_prompt_longer_than_the_route_takes_is_refused_before_the_app_runs(
    x402_local_stack: LocalStack,
) -> None:
    """Finding 4: ``max_input_tokens`` bounds the prompt a route takes (main had no bound)."""
    body = {"model": "m", "messages": [{"role": "user", "content": LONG_PROMPT}]}
    async with (
        chat_server(x402_local_stack, max_input_tokens=10_000) as served,
        httpx.AsyncClient(timeout=60) as client,
    ):
        response = await client.post(served.url, json=body)
    assert (response.status_code, response.json()["reason"]) == (413, "prompt_too_large")
    assert served.received == []


def padded(model: str, size: int) -> bytes:
    """A chat request for ``model`` padded with whitespace to ``size`` bytes."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    return body[:-1].encode() + b" " * (size - len(body)) + b"}"


async def in_pieces(body: bytes) -> AsyncIterator[bytes]:
    """The body sent chunked (no Content-Length), 64 KiB at a time."""
    for start in range(0, len(body), 65536):
        yield body[start : start + 65536]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_over_the_read_limit_is_refused_not_priced_at_the_default(
    x402_local_stack: LocalStack, framing: str
) -> None:
    """Finding 5. On main a body over the 1 MiB read limit was priced at the table's
    default: a dear model padded with whitespace was offered at the cheap price (and
    skipped shaping). Now it is 413 ``request_too_large``, whether its length is declared
    or it arrives chunked."""
    table = PriceTable({"dear": DEAR}, default=CHEAP)
    body = padded("dear", 1024 * 1024 + 1)
    content: bytes | AsyncIterator[bytes] = body if framing == "content-length" else in_pieces(body)
    headers = {"content-type": "application/json"}
    async with (
        chat_server(x402_local_stack, price_per_token=table) as served,
        httpx.AsyncClient(timeout=60) as client,
    ):
        small = await client.post(served.url, content=padded("dear", 1000), headers=headers)
        response = await client.post(served.url, content=content, headers=headers)
    assert (response.status_code, response.json()["reason"]) == (413, "request_too_large")
    assert "payment-required" not in response.headers
    assert served.received == []
    hi = {"messages": [{"role": "user", "content": "hi"}]}
    assert offered_amount(small) == max_amount(hi, price_atomic=100)  # under it, the dear price


async def test_shaping_reads_stream_and_output_limits_as_a_lenient_upstream_does(
    x402_local_stack: LocalStack,
) -> None:
    """Finding 7. On main ``"stream": 1`` (a stream for lenient upstreams) got no usage
    request, and ``"max_tokens": 5000.0`` was left as it was: the upstream generated past
    what the payment covers. Now both are read as the upstream reads them. A paid answer
    also carries ``Cache-Control: no-store`` (main sent none)."""
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": 1,
        "max_tokens": 5000.0,
    }
    key = new_funded_payer(x402_local_stack).key.hex()
    async with (
        chat_server(x402_local_stack, shape_requests=True, max_tokens=100) as served,
        x402HttpxClient(sdk_client(x402_local_stack, key), timeout=60) as client,
    ):
        response = await client.post(served.url, json=body)
    (forwarded,) = served.received
    assert response.status_code == 200
    assert forwarded["stream_options"] == {"include_usage": True}
    assert forwarded["max_tokens"] == 100
    assert b'"usage"' not in response.content  # the client did not ask for it
    assert response.headers["cache-control"] == "no-store"


async def test_an_apps_own_cache_policy_is_kept(x402_local_stack: LocalStack) -> None:
    """The rule, documented: ``no-store`` unless the app set a ``Cache-Control`` itself."""
    key = new_funded_payer(x402_local_stack).key.hex()
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        chat_server(x402_local_stack, cache_control="private, max-age=60") as served,
        x402HttpxClient(sdk_client(x402_local_stack, key), timeout=60) as client,
    ):
        response = await client.post(served.url, json=body)
    assert response.status_code == 200
    assert response.headers.get_list("cache-control") == ["private, max-age=60"]


async def test_an_upload_that_stalls_is_cut_off(x402_local_stack: LocalStack) -> None:
    """Finding 7. On main an unpaid request could send part of its body and hold the
    connection (and the buffered bytes) for as long as it liked; 200 of them held ~250 MiB.
    Now the body has a time limit: 408 ``request_timeout``, and its bytes are let go. (The
    client's own 60 s limit only keeps this test from hanging on main.)"""
    table = PriceTable({"dear": DEAR}, default=CHEAP)  # priced by the body: main read it too
    async with chat_server(
        x402_local_stack, price_per_token=table, request_body_timeout=1.0
    ) as served:
        host, port = served.base.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            head = (
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            )
            await stream.send(head.encode() + b'{"model": "m", "messages": [')
            answer = b""
            with anyio.fail_after(60):
                while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                    answer += await stream.receive()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"408"
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["reason"] == "request_timeout"
    assert served.received == []
