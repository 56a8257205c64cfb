"""The SSE endpoint the loopback benchmarks stream from, served by uvicorn in its own process.

``X402_BENCH_MODE`` picks what stands in front of the one app:

- ``bare``: nothing;
- ``forward``: an ASGI middleware that only passes each message on: what any middleware
  that sees the body costs, doing nothing with it (the floor X402Meter is measured against);
- ``meter``: ``X402Meter`` (per-token ``upto`` payments, the local facilitator, a SQLite ledger);
- ``sdk``: the x402 SDK's own ``PaymentMiddlewareASGI`` at the same maximum price, with the
  same ``pay_to``, asset, network and facilitator (it buffers the body and settles the whole
  maximum before the first byte goes out).

``meter`` also answers ``POST /bench/claim``: a pass of its sessions' claims worker now
(``claim_now``), with what it did; the session benchmark claims at the end of its run.

``POST /v1/chat/completions?events=N&interval=MS&hold=K`` streams N OpenAI chat-completion
chunks, ``MS`` milliseconds apart (default: back to back), then a usage chunk and
``[DONE]``; with ``hold=K`` it sends K chunks and waits for ``POST /release`` (a free route)
before the rest, so a benchmark can hold streams open on an event rather than a timer.
Without a query, the same settings may come in the JSON body as ``"x_bench": {"events":
N, ...}`` (a gateway in front forwards no query string).

Environment: ``X402_BENCH_MODE``, ``X402_BENCH_STACK`` (the local stack as JSON),
``X402_BENCH_STORE`` (the ledger URL, ``meter`` only), ``X402_BENCH_MAX_TOKENS``,
``X402_BENCH_NULL_METER`` (set: ``meter`` with a meter that reads nothing).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:  # the bare app's process never imports x402_meter
    from x402_meter.metering import ResponseInfo, Usage

PRICE_PER_TOKEN: Final = "0.000002"
"""USDC per token (2 atomic units of a 6-decimals asset)."""
PRICE_ATOMIC: Final = 2
PATH: Final = "/v1/chat/completions"

# What OpenAI sends for one token of a streamed chat completion with include_usage (about
# 280 bytes): the benchmarks stream the same event every time.
_ID: Final = '"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk"'
_MODEL: Final = '"created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default"'
EVENT: Final = (
    "data: {"
    + _ID
    + ","
    + _MODEL
    + ',"system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{"content":" token"}'
    + ',"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
).encode()
DONE: Final = b"data: [DONE]\n\n"
PROMPT_TOKENS: Final = 57


def usage_event(completion_tokens: int) -> bytes:
    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
    }
    body = "{" + _ID + "," + _MODEL + ',"choices":[],"usage":' + json.dumps(usage) + "}"
    return b"data: " + body.encode() + b"\n\n"


class _Release:
    """``POST /release`` lets every stream held so far go on; later ones wait for the next."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None

    def current(self) -> asyncio.Event:
        if self.event is None:
            self.event = asyncio.Event()
        return self.event

    def release(self) -> None:
        self.current().set()
        self.event = None


_release = _Release()


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return b"".join(chunks)


def _settings(scope: Scope, body: bytes) -> dict[str, list[str]]:
    """The stream's settings: the query, else the body's ``"x_bench"`` object (for a
    gateway in front, which forwards no query string)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query or not body:
        return query
    try:
        given = json.loads(body).get("x_bench") or {}
    except (ValueError, AttributeError):
        return {}
    return {name: [str(value)] for name, value in given.items()}


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _text(send: Send, status: int, text: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(text)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": text})


async def sse_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The app every mode serves: an LLM's streamed answer, as fast as the server takes it."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    body = await _read_body(receive)
    if scope["path"] == "/release":
        _release.release()
        await _text(send, 200, b"released")
        return
    if scope["path"] != PATH:
        await _text(send, 404, b"not found")
        return
    query = _settings(scope, body)
    events = int(query.get("events", ["64"])[0])
    interval = float(query.get("interval", ["0"])[0]) / 1000
    hold = int(query.get("hold", ["-1"])[0])
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    for index in range(events):
        if index == hold:
            await _release.current().wait()
        await send({"type": "http.response.body", "body": EVENT, "more_body": True})
        if interval:
            await asyncio.sleep(interval)
    await send({"type": "http.response.body", "body": usage_event(events), "more_body": True})
    await send({"type": "http.response.body", "body": DONE, "more_body": False})


def _stack() -> dict[str, Any]:
    stack: dict[str, Any] = json.loads(os.environ["X402_BENCH_STACK"])
    return stack


def max_tokens() -> int:
    return int(os.environ.get("X402_BENCH_MAX_TOKENS", "16384"))


def _metered(app: ASGIApp) -> ASGIApp:
    from x402_meter import Asset, X402Meter
    from x402_meter.metering import auto_meter

    stack = _stack()
    return X402Meter(
        app,
        pay_to=stack["pay_to"],
        facilitator_url=stack["facilitator_url"],
        facilitator_api_key=stack["facilitator_api_key"],
        network=stack["network"],
        asset=Asset(
            stack["asset"], stack["asset_name"], stack["asset_version"], stack["asset_decimals"]
        ),
        price_per_token=PRICE_PER_TOKEN,
        max_tokens=max_tokens(),
        routes=[f"POST {PATH}"],
        store=os.environ["X402_BENCH_STORE"],
        meter=_counts_nothing if os.environ.get("X402_BENCH_NULL_METER") else auto_meter,
        **_extra_options(),
    )


def _extra_options() -> dict[str, Any]:
    """``$X402_BENCH_METER_OPTIONS`` (JSON): options that the x402_meter being served knows
    (an older tree, for a baseline, is served without the ones it lacks)."""
    import inspect

    from x402_meter.config import MeterConfig

    known = inspect.signature(MeterConfig).parameters
    extra = json.loads(os.environ.get("X402_BENCH_METER_OPTIONS", "{}"))
    return {name: value for name, value in extra.items() if name in known}


class _NothingCounted:
    """A meter that reads nothing: what X402Meter costs around its meter (section 1)."""

    def feed(self, chunk: bytes) -> None:
        pass

    def finish(self) -> Usage:
        from x402_meter.metering import Usage

        return Usage(PROMPT_TOKENS, 0)

    def snapshot(self) -> None:
        return None  # no count mid-stream


def _counts_nothing(response: ResponseInfo) -> _NothingCounted:
    return _NothingCounted()


def _sdk(app: ASGIApp) -> ASGIApp:
    from x402.http import FacilitatorConfig, HTTPFacilitatorClient, PaymentOption, RouteConfig
    from x402.http.middleware.fastapi import PaymentMiddlewareASGI
    from x402.mechanisms.evm.upto import UptoEvmServerScheme
    from x402.schemas import AssetAmount
    from x402.server import x402ResourceServer

    stack = _stack()
    from x402_meter.facilitator import bearer_auth_provider

    auth = bearer_auth_provider(stack["facilitator_api_key"])
    facilitator = HTTPFacilitatorClient(
        FacilitatorConfig(url=stack["facilitator_url"], auth_provider=auth)
    )
    scheme: Any = UptoEvmServerScheme()  # type: ignore[no-untyped-call]  # the SDK's, untyped
    server = x402ResourceServer(facilitator).register(stack["network"], scheme)
    # The same maximum as X402Meter asks for: max_tokens at the price per token.
    price = AssetAmount(
        amount=str(max_tokens() * PRICE_ATOMIC),
        asset=stack["asset"],
        extra={"name": stack["asset_name"], "version": stack["asset_version"]},
    )
    option = PaymentOption(
        scheme="upto",
        pay_to=stack["pay_to"],
        price=price,
        network=stack["network"],
        max_timeout_seconds=300,
    )
    routes = {f"POST {PATH}": RouteConfig(accepts=option, mime_type="text/event-stream")}
    return PaymentMiddlewareASGI(app, routes=routes, server=server)


def forwarding(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def forward(message: Message) -> None:
            await send(message)

        await app(scope, receive, forward)

    return middleware


def claiming(meter: Any) -> ASGIApp:
    """``meter`` with ``POST /bench/claim``: its claims worker's pass, on demand."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/bench/claim":
            await meter(scope, receive, send)
            return
        claims = meter.runtime.claims
        if claims is None:
            await _text(send, 404, b"sessions are not offered")
            return
        done = await claims.claim_now()
        summary = {"claims": len(done.claims), "sweeps": len(done.sweeps)}
        await _text(send, 200, json.dumps(summary).encode())

    return app


def build() -> ASGIApp:
    mode = os.environ.get("X402_BENCH_MODE", "bare")
    if mode == "bare":
        return sse_app
    if mode == "forward":
        return forwarding(sse_app)
    if mode == "meter":
        return claiming(_metered(sse_app))
    if mode == "sdk":
        return _sdk(sse_app)
    raise SystemExit(f"X402_BENCH_MODE must be bare, forward, meter or sdk, not {mode!r}")


app = build()
