"""A chat API that charges per token with x402: a complete first endpoint.

``POST /v1/chat/completions`` answers as OpenAI's API does, streamed or not. X402Meter
asks each caller for an ``upto`` payment (an authorization of at most the prompt plus
``max_tokens`` of output, at the price), lets the answer stream while it counts the
tokens, then settles only what was used.

Run it with ``uvicorn server:app --port 8000``, configured by the ``X402_...`` variables
that ``x402-meter dev`` prints (see docs/first-endpoint.md).
"""

import json
import os

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from x402_meter import Asset, X402Meter
from x402_meter.devstack.stub_model import complete_chat, stream_chat

app = FastAPI()


@app.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    """An offline stand-in for a model: put yours (or a relay to one) here."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        error = {"message": "the body must be a JSON object", "type": "invalid_request_error"}
        return JSONResponse({"error": error}, status_code=400)
    if body.get("stream"):
        return StreamingResponse(stream_chat(body), media_type="text/event-stream")
    return JSONResponse(complete_chat(body))


def asset_from_env() -> Asset | None:
    """The token to be paid in: ``X402_ASSET`` if set (the local stack's test USDC), else
    None, which means the network's USDC."""
    address = os.environ.get("X402_ASSET")
    if not address:
        return None
    return Asset(
        address,
        os.environ.get("X402_ASSET_NAME", "USD Coin"),  # the token's EIP-712 domain
        os.environ.get("X402_ASSET_VERSION", "2"),
        int(os.environ.get("X402_ASSET_DECIMALS", "6")),
    )


app.add_middleware(
    X402Meter,
    pay_to=os.environ["X402_PAY_TO"],  # your address: it receives the payments
    network=os.environ["X402_NETWORK"],  # CAIP-2: eip155:31337 local, eip155:84532 Base Sepolia
    asset=asset_from_env(),
    facilitator_url=os.environ["X402_FACILITATOR_URL"],  # verifies and settles on chain
    facilitator_api_key=os.environ.get("X402_FACILITATOR_API_KEY"),
    price_per_token="0.000002",  # USDC per token, as a string: prices are never floats
    max_tokens=1024,  # the most output one answer may cost
    routes=["POST /v1/chat/completions"],
    shape_requests=True,  # ask the model for its usage report, and never for more than the cap
)
