"""A paid request's objects are freed as soon as it is done.

The pipeline's stages refer to each other (the tap to the ledger, the heartbeat to the
tap); none refers back in a cycle once the exchange is over, so the meter, the buffers and
the records of a finished request do not wait for the garbage collector (which, on a busy
server, would promote them and scan them again and again).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import MutableMapping
from typing import Any

import pytest
from eth_account import Account
from x402 import x402Client
from x402.http.utils import encode_payment_signature_header
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import PaymentRequired

from tests.unit.test_middleware_hot_path import ASSET, NETWORK, app_with, chunk, metered
from x402_meter import TokenPrice, X402Meter
from x402_meter.devstack.accounts import PAYERS
from x402_meter.routing import DEFAULT_SPEC


async def payment_headers(meter: X402Meter, count: int) -> list[bytes]:
    offer = await meter.runtime.offer(DEFAULT_SPEC, TokenPrice.flat("0.000002"))
    required = offer.payment_required("http://test/v1/chat/completions", "payment required")
    client = x402Client().register(
        NETWORK, UptoEvmClientScheme(Account.from_key(PAYERS[0].private_key))
    )
    client.set_spend_controls({"allowed_assets": [{"network": NETWORK, "asset": ASSET.address}]})
    headers = []
    for _ in range(count):
        payload = await client.create_payment_payload(PaymentRequired(accepts=required.accepts))
        headers.append(encode_payment_signature_header(payload).encode())
    return headers


async def serve(meter: X402Meter, header: bytes) -> list[dict[str, Any]]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"payment-signature", header)],
        "scheme": "http",
        "server": ("test", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"messages": []}', "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await meter(scope, receive, send)
    await meter.runtime.settler.drain()
    return sent


def json_app(body: bytes) -> Any:
    """An app answering with one JSON body: held when settled before the response."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


ANSWER = b'{"object":"chat.completion","choices":[{"message":{"content":"hello"}}]}'


@pytest.mark.parametrize("held", [False, True], ids=["streamed", "held-until-settled"])
def test_a_finished_paid_request_leaves_no_reference_cycles(held: bool) -> None:
    app = json_app(ANSWER) if held else app_with([chunk(f" word{i}") for i in range(50)])
    meter = metered(app, max_tokens=10**6, settle_before_response=held)

    async def unreachable_after_requests() -> int:
        first, *rest = await payment_headers(meter, 4)
        await serve(meter, first)  # warm: offers built, tokenizer and settler started
        gc.collect()
        gc.disable()
        try:
            for header in rest:
                sent = await serve(meter, header)
                assert sent[0]["status"] == 200
                # held: the settle response went out with the answer
                assert any(k == b"payment-response" for k, _ in sent[0]["headers"]) is held
            return gc.collect()
        finally:
            gc.enable()

    assert asyncio.run(unreachable_after_requests()) == 0
