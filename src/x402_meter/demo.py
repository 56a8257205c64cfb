"""``x402-meter demo``: one paid, streamed chat answer, end to end, on the local stack.

Every part is real: anvil runs the chain, an OpenAI-compatible endpoint (an offline stub
model) sits behind ``X402Meter`` in uvicorn, the official x402 SDK client pays, the local
facilitator verifies over HTTP, and the actual cost is settled on chain after the stream.
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
from decimal import Decimal
from typing import Any

import anyio
import httpx
from eth_account import Account
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import PaymentRequired

from x402_meter.assets import Asset
from x402_meter.devstack import LocalStack, local_stack, token_balance
from x402_meter.devstack.asgi_server import serving
from x402_meter.devstack.stub_model import complete_chat, stream_chat
from x402_meter.metering.sse import SSEParser
from x402_meter.middleware import X402Meter

PRICE_PER_TOKEN = "0.000002"  # noqa: S105 - a price, not a password
MAX_TOKENS = 4096
QUESTION = {
    "model": "local-stub",
    "messages": [{"role": "user", "content": "What is x402, in two sentences?"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}


def _usdc(stack: LocalStack, atomic: int) -> str:
    return f"{Decimal(atomic).scaleb(-stack.asset_decimals):f} USDC"


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


async def _chat(request: Request) -> Response:
    body = await request.json()
    if body.get("stream"):
        return StreamingResponse(stream_chat(body), media_type="text/event-stream")
    return JSONResponse(complete_chat(body))


def demo_app(stack: LocalStack, store_url: str = "memory://") -> X402Meter:
    """The stub model's chat endpoint, metered per token with x402."""
    app = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])])
    return X402Meter(
        app,
        pay_to=stack.pay_to,
        facilitator_url=stack.facilitator_url,
        network=stack.network,
        asset=Asset(stack.asset, stack.asset_name, stack.asset_version, stack.asset_decimals),
        price_per_token=PRICE_PER_TOKEN,
        max_tokens=MAX_TOKENS,
        routes=["POST /v1/chat/completions"],
        store=store_url,
    )


def _delta_text(data: str) -> str:
    try:
        chunk = json.loads(data)
        return "".join(c["delta"].get("content") or "" for c in chunk.get("choices", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""


async def _converse(stack: LocalStack, base: str) -> dict[str, Any]:
    url = f"{base}/v1/chat/completions"
    async with httpx.AsyncClient() as plain:
        challenge = await plain.post(url, json=QUESTION)
    required = PaymentRequired.model_validate_json(
        base64.b64decode(challenge.headers["payment-required"])
    )
    upto = required.accepts[0]
    maximum = _usdc(stack, int(upto.amount))
    _step(
        f"{challenge.status_code} Payment Required: '{upto.scheme}' up to {maximum}"
        f" ({MAX_TOKENS} tokens at {PRICE_PER_TOKEN} USDC)"
    )

    payer = Account.from_key(stack.payer_private_keys[0])
    client = x402Client().register(stack.network, UptoEvmClientScheme(payer))
    client.set_spend_controls(
        {"allowed_assets": [{"network": stack.network, "asset": stack.asset}]}
    )
    async with x402HttpxClient(client, timeout=60) as paying:
        _step(f"payer {payer.address} signs a Permit2 authorization (EIP-712) and retries")
        async with paying.stream("POST", url, json=QUESTION) as response:
            _step(f"{response.status_code}: verified by the facilitator; the answer streams:")
            parser = SSEParser()
            print("    ", end="", flush=True)
            async for chunk in response.aiter_raw():
                for event in parser.feed(chunk):
                    print(_delta_text(event.data), end="", flush=True)
            print(flush=True)
            receipt_path = response.headers["x-payment-receipt"]
        _step(f"the body closed; settling the actual cost (receipt {receipt_path})")
        answer = await paying.get(f"{base}{receipt_path}", params={"wait": 30})
    receipt: dict[str, Any] = answer.json()
    return receipt


async def _run(stack: LocalStack, store_url: str) -> int:
    async with serving(demo_app(stack, store_url)) as base:
        _step(f"chat endpoint metered by X402Meter at {base}/v1/chat/completions")
        receipt = await _converse(stack, base)
    if receipt["status"] != "settled":
        print(f"settlement did not complete: {receipt}", file=sys.stderr)
        return 1
    tokens = receipt["input_tokens"] + receipt["output_tokens"]
    _step(
        f"charged {_usdc(stack, int(receipt['amount']))} for {tokens} tokens"
        f" ({receipt['input_tokens']} in, {receipt['output_tokens']} out,"
        f" {receipt['usage_source']})"
    )
    _step(f"settled on chain: transaction {receipt['transaction']}")
    return 0


def run_demo() -> int:
    _step("starting the local stack (anvil, test USDC, Permit2, upto proxy, facilitator)")
    with local_stack() as stack, tempfile.TemporaryDirectory(prefix="x402-demo-") as scratch:
        store_url = f"sqlite:///{scratch}/ledger.sqlite3"
        _step(f"payments are recorded in {store_url}")
        w3 = stack.web3()
        payer = Account.from_key(stack.payer_private_keys[0]).address
        accounts = (("payer", payer), ("seller", stack.pay_to))
        before = {who: token_balance(w3, stack.asset, address) for who, address in accounts}
        status = anyio.run(_run, stack, store_url)
        for who, address in accounts:
            now = token_balance(w3, stack.asset, address)
            print(f"    {who:6} {_usdc(stack, before[who])} -> {_usdc(stack, now)}", flush=True)
    _step("stopped the local stack" + (": demo complete" if status == 0 else ""))
    return status
