"""The app the fault-injection tests run in real uvicorn processes (configured by env).

POST /v1/chat/completions streams the offline stub model's answer, metered. With
``?hold_after=N`` it sends N chunks and then holds the stream until ``POST /release`` (a
free route) is called in the same process, so a test can stop the facilitator or kill the
server while streams are open, on an event instead of a timer.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from x402_meter import Asset, X402Meter
from x402_meter.devstack.stub_model import stream_chat
from x402_meter.settlement import RetryPolicy

release = anyio.Event()
app = FastAPI()


@app.post("/v1/chat/completions")
async def chat(request: Request, hold_after: int = -1) -> StreamingResponse:
    body = await request.json()

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


@app.post("/release")
async def release_streams() -> dict[str, bool]:
    release.set()
    return {"released": True}


stack = json.loads(os.environ["X402_TEST_STACK"])
app.add_middleware(
    X402Meter,
    pay_to=stack["pay_to"],
    facilitator_url=os.environ.get("X402_TEST_FACILITATOR_URL", stack["facilitator_url"]),
    facilitator_api_key=stack["facilitator_api_key"],
    network=stack["network"],
    asset=Asset(
        stack["asset"], stack["asset_name"], stack["asset_version"], stack["asset_decimals"]
    ),
    price_per_token="0.000002",
    max_tokens=4096,
    routes=["POST /v1/chat/completions"],
    store=os.environ["X402_TEST_STORE"],
    checkpoint_every=0.0,  # before every chunk: what a client has seen is on record
    settlement_retry=RetryPolicy(
        first=0.2, longest=1.0, inline_attempts=2, sweep_every=0.2, lease_seconds=2.0
    ),
)
