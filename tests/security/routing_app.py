"""The app the routing attack tests run under ``uvicorn --root-path`` (configured by env).

POST /v1/chat/completions streams the offline stub model's answer, metered by the route
table; GET /runs (free) says how many times that endpoint has run, so a test can tell that
an unpaid request never reached the model, also when no byte of the answer came back.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from x402_meter import Asset, X402Meter
from x402_meter.devstack.stub_model import stream_chat

app = FastAPI()
app.state.runs = 0


@app.post("/v1/chat/completions")
async def chat(request: Request) -> StreamingResponse:
    request.app.state.runs += 1
    return StreamingResponse(stream_chat(await request.json()), media_type="text/event-stream")


@app.get("/runs")
async def count_runs(request: Request) -> dict[str, Any]:
    return {"runs": request.app.state.runs}


stack = json.loads(os.environ["X402_TEST_STACK"])
app.add_middleware(
    X402Meter,
    pay_to=stack["pay_to"],
    facilitator_url=stack["facilitator_url"],
    network=stack["network"],
    asset=Asset(
        stack["asset"], stack["asset_name"], stack["asset_version"], stack["asset_decimals"]
    ),
    price_per_token="0.000002",
    max_tokens=4096,
    routes=["POST /v1/chat/completions"],
    store=os.environ["X402_TEST_STORE"],
)
