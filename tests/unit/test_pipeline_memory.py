"""A paid request's objects are freed as soon as it is done.

The pipeline's stages refer to each other (the tap to the ledger, the heartbeat to the
tap); none refers back in a cycle once the exchange is over, so the meter, the buffers and
the records of a finished request do not wait for the garbage collector (which, on a busy
server, would promote them and scan them again and again).
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from tests.unit.test_middleware_hot_path import app_with, chunk, metered, payment_headers, serve


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
