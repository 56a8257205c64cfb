"""The in-process tier's harness: a metered app, its client, and a payer signing with the SDK.

The app under test is called through ``httpx.ASGITransport`` (no server, no sockets); the
meter talks to ``InProcessFacilitator`` over its own HTTP client. ``ASGITransport`` runs no
lifespan, so ``calling`` does at the end what the lifespan's shutdown does: it lets the
settlement worker finish.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import httpx
from eth_account import Account
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send
from x402 import x402Client
from x402.http import decode_payment_required_header, encode_payment_signature_header
from x402.mechanisms.evm.exact import ExactEvmClientScheme
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

from tests.apps import MAX_TOKENS, PRICE
from tests.inprocess.facilitator import NETWORK, InProcessFacilitator
from tests.openai_stream import PIECES, completion_json, sse_events
from x402_meter import Asset, MemoryStore, X402Meter
from x402_meter.devstack.accounts import PAYERS, SELLER

ASSET: Final = Asset("0x5FbDB2315678afecb367f032d93F642f64180aa3", "USD Coin", "2", 6)
PAYER: Final = PAYERS[0]
CHAT: Final = "/v1/chat/completions"
QUESTION: Final = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STREAMED: Final = {**QUESTION, "stream": True}

FIRST, *REST = sse_events(with_usage=False)
FIRST += REST.pop(0)  # the role and the first words: something to charge for

HANG: Final = 30
"""Seconds after which a test that waits on the meter fails (a guard against a hang)."""

App = Callable[[Any, Any, Any], Awaitable[None]]


def metered(app: App, facilitator: InProcessFacilitator, **overrides: Any) -> X402Meter:
    """``X402Meter`` around ``app`` with the tier's options, a fresh ``MemoryStore``."""
    options: dict[str, Any] = {
        "pay_to": SELLER.address,
        "network": NETWORK,
        "asset": ASSET,
        "price_per_token": PRICE,
        "max_tokens": MAX_TOKENS,
        "routes": [f"POST {CHAT}"],
        "store": MemoryStore(),
        "facilitator": facilitator.client(),
    }
    return X402Meter(app, **(options | overrides))


@asynccontextmanager
async def calling(
    meter: X402Meter, *, sent: list[Message] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``meter``; on leaving, settlements in flight finish (the lifespan's job).

    An exception that the meter lets out fails the request (a server would log it).
    ``sent`` collects the messages the meter sends, as the server receives them.
    """
    app: App = meter
    if sent is not None:
        kept = sent

        async def server_side(scope: Scope, receive: Receive, send: Send) -> None:
            async def keep(message: Message) -> None:
                kept.append(message)
                await send(message)

            await meter(scope, receive, keep)

        app = server_side
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        await meter.runtime.settler.aclose()


def chat_app(
    *, status: int = 200, pieces: tuple[str, ...] = PIECES, sent: list[bytes] | None = None
) -> App:
    """An OpenAI-compatible chat endpoint: JSON, or SSE when the body asks for a stream.

    ``sent`` collects the stream's chunks as the app yields them (to see where it stopped).
    """

    async def chat(request: Request) -> Response:
        body = await request.json()
        if status != 200:
            return JSONResponse({"error": "upstream failed"}, status_code=status)
        if not body.get("stream"):
            return JSONResponse(completion_json("".join(pieces)))

        async def events() -> AsyncIterator[bytes]:
            for event in sse_events(pieces, with_usage=False):
                if sent is not None:
                    sent.append(event)
                yield event

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route(CHAT, chat, methods=["POST"])])


class WaitingApp:
    """Sends its first chunk, then waits for its upstream (``finish``), which may never come."""

    def __init__(self) -> None:
        self.streaming = anyio.Event()
        self.finish = anyio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": FIRST, "more_body": True})
        self.streaming.set()
        await self.finish.wait()
        await send({"type": "http.response.body", "body": b"".join(REST)})


def offered(challenge: httpx.Response, scheme: str = "upto") -> PaymentRequirements:
    """The requirements a 402's ``PAYMENT-REQUIRED`` header offers for ``scheme``."""
    required = decode_payment_required_header(challenge.headers["payment-required"])
    for requirements in required.accepts:
        if requirements.scheme == scheme:
            assert isinstance(requirements, PaymentRequirements)
            return requirements
    raise AssertionError(f"{scheme} not offered: {required.accepts}")


async def signed(
    requirements: PaymentRequirements, private_key: str = PAYER.private_key
) -> PaymentPayload:
    """A payload for ``requirements`` signed by the official SDK client, locally (no chain)."""
    account = Account.from_key(private_key)
    client = x402Client()
    client.register(NETWORK, UptoEvmClientScheme(account))
    client.register(NETWORK, ExactEvmClientScheme(account))
    client.set_spend_controls({"allowed_assets": [{"network": NETWORK, "asset": ASSET.address}]})
    payload = await client.create_payment_payload(PaymentRequired(accepts=[requirements]))
    assert isinstance(payload, PaymentPayload)
    return payload


def header(payload: PaymentPayload) -> dict[str, str]:
    return {"payment-signature": encode_payment_signature_header(payload)}


async def pay(
    client: httpx.AsyncClient, body: Any = QUESTION, scheme: str = "upto", **changes: Any
) -> httpx.Response:
    """Ask, sign what the 402 offers (with ``changes``: a payer that signs something else),
    and send the request again with the payment."""
    challenge = await client.post(CHAT, json=body)
    assert challenge.status_code == 402, challenge.text
    requirements = offered(challenge, scheme).model_copy(update=changes)
    return await client.post(CHAT, json=body, headers=header(await signed(requirements)))


async def paid_stream(
    client: httpx.AsyncClient, app: WaitingApp, once_streaming: Callable[[], Any]
) -> httpx.Response:
    """Pay for a stream; once its first chunk is out, run ``once_streaming`` (a coroutine
    function, or a plain one that changes the facilitator); the whole answer."""
    answers: list[httpx.Response] = []

    async def paying() -> None:
        answers.append(await pay(client, STREAMED))

    with anyio.fail_after(HANG):  # a guard against a hang, not a timing assertion
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(paying)
            await app.streaming.wait()
            changed = once_streaming()
            if changed is not None:
                await changed
    [answer] = answers
    return answer


async def receipt_of(client: httpx.AsyncClient, answer: httpx.Response, wait: float = 10) -> Any:
    """The answer's receipt, once final (or after ``wait`` seconds, still pending)."""
    response = await client.get(answer.headers["x-payment-receipt"], params={"wait": wait})
    assert response.status_code == 200, response.text
    return response.json()
