"""The app that ``x402-meter demo`` pays: an OpenAI-compatible chat endpoint, metered per token.

It ships inside the package (``examples/`` does not), so the demo runs from a plain
``pip install 'x402-meter[demo]'`` anywhere, not only from a source checkout. Starlette
only, so the demo needs no framework extra; the answers come from the offline stub model.
It meters exactly as the FastAPI example's chat route does (same price, cap and request
shaping), so the demo's figures are the ones the examples charge.
"""

from __future__ import annotations

import json
from typing import Any, Final

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from x402_meter.assets import Asset
from x402_meter.devstack.stub_model import complete_chat, pieces, stream_chat, stub_answer
from x402_meter.middleware import X402Meter
from x402_meter.store import PaymentStore

CHAT_PATH: Final = "/v1/chat/completions"
MODEL: Final = "local-stub"
PRICE: Final = "0.000002"  # per token
"""USD (here: test USDC) per token, input and output alike."""
MAX_TOKENS: Final = 4096
"""The most output one answer may cost; the 402 asks for the prompt plus this many tokens."""


async def _chat(request: Request) -> Response:
    """The stub model's answer, streamed (SSE) or whole, as OpenAI's API gives it."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        error = {"message": "the body must be a JSON object", "type": "invalid_request_error"}
        return JSONResponse({"error": error}, status_code=400)
    answer = pieces(stub_answer(body))
    if body.get("stream"):
        return StreamingResponse(stream_chat(body, answer), media_type="text/event-stream")
    return JSONResponse(complete_chat(body, answer))


def create_demo_app(
    *,
    pay_to: str,
    network: str,
    facilitator_url: str,
    facilitator_api_key: str | None,
    asset: Asset,
    store: PaymentStore,
) -> Starlette:
    """``POST /v1/chat/completions`` behind ``X402Meter``; receipts at ``/x402/receipts/``."""
    meter: dict[str, Any] = {
        "pay_to": pay_to,
        "network": network,
        "facilitator_url": facilitator_url,
        "facilitator_api_key": facilitator_api_key,
        "asset": asset,
        "store": store,
        "price_per_token": PRICE,
        "max_tokens": MAX_TOKENS,
        "routes": [f"POST {CHAT_PATH}"],
        "shape_requests": True,  # ask the stub for its usage report, as the examples do
        "description": "chat completion, per token",
    }
    return Starlette(
        routes=[Route(CHAT_PATH, _chat, methods=["POST"])],
        middleware=[Middleware(X402Meter, **meter)],
    )
