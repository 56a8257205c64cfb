"""The app the fault-injection tests run in real uvicorn processes (configured by env).

POST /v1/chat/completions streams the offline stub model's answer, metered. With
``?hold_after=N`` it sends N chunks and then holds the stream until ``POST /release`` (a
free route) is called in the same process, so a test can stop the facilitator or kill the
server while streams are open, on an event instead of a timer. With ``?per_second=N`` it
streams without end, N chunks a second, as a model that never stops would: only the meter
can end it. ``GET /runs`` (free) says how many times it has run, so a test can tell that an
unpaid request never reached the model; ``GET /facilitator-calls`` (free), how many times the
meter called each facilitator endpoint; ``POST /claims`` (free), has the meter's claims worker
run a pass now (sessions) and says what it did. ``$X402_TEST_METER_OPTIONS`` (JSON) adds or
replaces middleware options; those the x402_meter being served does not know are left out,
so that the tests can be run against older code to show that they fail there.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from x402_meter import Asset, X402Meter
from x402_meter.config import MeterConfig
from x402_meter.devstack.stub_model import stream_chat
from x402_meter.facilitator import FacilitatorClient
from x402_meter.settlement import RetryPolicy

release = anyio.Event()
app = FastAPI()
app.state.runs = 0


@app.post("/v1/chat/completions")
async def chat(request: Request, hold_after: int = -1, per_second: int = 0) -> StreamingResponse:
    request.app.state.runs += 1
    body = await request.json()
    if per_second > 0:
        return StreamingResponse(endless(per_second), media_type="text/event-stream")

    async def chunks() -> AsyncIterator[bytes]:
        index = 0
        async for chunk in stream_chat(body):
            if index == hold_after:
                await release.wait()
            index += 1
            yield chunk

    return StreamingResponse(chunks(), media_type="text/event-stream")


@app.get("/clock")
async def clock() -> dict[str, float]:
    """What this process's monotonic clock reads (a free route)."""
    return {"monotonic": time.monotonic()}


def word_chunk(content: str) -> bytes:
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": None}
    body = {"id": "chatcmpl-endless", "object": "chat.completion.chunk", "choices": [choice]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def endless(per_second: int) -> AsyncIterator[bytes]:
    while True:
        yield word_chunk(" word")
        await anyio.sleep(1 / per_second)  # the model's pace, not a wait in a test


@app.get("/runs")
async def count_runs(request: Request) -> dict[str, int]:
    return {"runs": request.app.state.runs}


@app.post("/release")
async def release_streams() -> dict[str, bool]:
    release.set()
    return {"released": True}


class CountedCalls(httpx.AsyncHTTPTransport):
    """The meter's transport to the facilitator: counts its calls by path."""

    def __init__(self) -> None:
        super().__init__()
        self.by_path: Counter[str] = Counter()
        self.counted = anyio.Event()
        """Set by the next call (then replaced)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.by_path[request.url.path] += 1
        counted, self.counted = self.counted, anyio.Event()
        counted.set()
        return await super().handle_async_request(request)


calls = CountedCalls()


@app.get("/facilitator-calls")
async def facilitator_calls(verify_at_least: int = 0) -> dict[str, int]:
    """How many times the meter called each facilitator endpoint (a free route), once it
    has called ``/verify`` at least ``verify_at_least`` times."""
    while calls.by_path["/verify"] < verify_at_least:
        await calls.counted.wait()
    return dict(calls.by_path)


def the_meter() -> X402Meter:
    """The meter this app is served behind (Starlette built it into the middleware stack)."""
    layer: Any = app.middleware_stack
    while not isinstance(layer, X402Meter):
        layer = layer.app
    return layer


@app.post("/claims")
async def claim_now() -> dict[str, Any]:
    """A pass of the claims worker, now: its claims (transaction, each channel's claimed
    cumulative), its sweeps, what was refused and why it stopped early, if it did."""
    claims = the_meter().runtime.claims
    assert claims is not None, "sessions are not offered"
    report = await claims.claim_now()
    return {
        "claims": [
            {"transaction": c.transaction, "totals": {k: str(v) for k, v in c.totals.items()}}
            for c in report.claims
        ],
        "sweeps": report.sweeps,
        "refused": report.refused,
        "interrupted": report.interrupted,
    }


stack = json.loads(os.environ["X402_TEST_STACK"])
known = inspect.signature(MeterConfig).parameters
extra: dict[str, Any] = {
    name: value
    for name, value in json.loads(os.environ.get("X402_TEST_METER_OPTIONS", "{}")).items()
    if name in known
}
options: dict[str, Any] = {
    "pay_to": stack["pay_to"],
    "facilitator": FacilitatorClient(
        os.environ.get("X402_TEST_FACILITATOR_URL", stack["facilitator_url"]),
        api_key=stack["facilitator_api_key"],
        transport=calls,
    ),
    "network": stack["network"],
    "asset": Asset(
        stack["asset"], stack["asset_name"], stack["asset_version"], stack["asset_decimals"]
    ),
    "price_per_token": "0.000002",
    "max_tokens": 4096,
    "routes": ["POST /v1/chat/completions"],
    "store": os.environ["X402_TEST_STORE"],
    "checkpoint_every": 0.0,  # before every chunk: what a client has seen is on record
    "settlement_retry": RetryPolicy(
        first=0.2, longest=1.0, inline_attempts=2, sweep_every=0.2, lease_seconds=2.0
    ),
}
app.add_middleware(X402Meter, **(options | extra))
