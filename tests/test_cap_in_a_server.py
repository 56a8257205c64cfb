"""``on_cap="end"`` in a real uvicorn process: a stream that reaches its authorized maximum
ends cleanly, is charged the maximum on chain, and is no error in the server's log (an
"Exception in ASGI application" per capped answer would be noise to an operator, and trip
an error-rate alarm; uvicorn also closed the connection, failing a keep-alive client's next
request on it: here, the receipt's)."""

from __future__ import annotations

from pathlib import Path

import pytest
from x402.http.clients import x402HttpxClient

from tests.examples.conftest import new_funded_payer
from tests.fault_harness import uvicorn_server
from tests.sdk_payer import sdk_client
from tests.test_faults import CHAT, PRICE_ATOMIC, balance, settled_receipt
from x402_meter.devstack import LocalStack

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MAX_TOKENS = 5


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("", id="app-sends-at-once"),  # its next send follows the capped chunk
        pytest.param("?per_second=200", id="app-paced"),  # it waits between chunks
    ],
)
async def test_a_stream_ended_at_its_cap_is_charged_the_maximum_and_logs_no_error(
    x402_local_stack: LocalStack, tmp_path: Path, query: str
) -> None:
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    seller_before = balance(stack, stack.pay_to)
    log = tmp_path / "server.log"
    options = {"max_tokens": MAX_TOKENS, "on_cap": "end"}
    with uvicorn_server(
        stack, f"sqlite:///{tmp_path}/ledger.db", log, meter_options=options
    ) as server:
        async with x402HttpxClient(sdk_client(stack, payer.key.hex()), timeout=60) as client:
            url = f"{server.url}/v1/chat/completions{query}"
            answer = await client.post(url, json=CHAT)
            path = answer.headers["x-payment-receipt"]
            receipt = await settled_receipt(client, server.url, path)
    # The server has stopped: whatever it had to say about the answer is in its log.

    assert answer.status_code == 200
    events = answer.content.split(b"\n\n")
    assert events[-1] == b""  # the body ends after a whole event
    assert b"[DONE]" not in answer.content
    assert len(events) - 1 >= MAX_TOKENS  # the stream ran to the cap, not less
    assert receipt["status"] == "settled"
    assert receipt["output_tokens"] >= MAX_TOKENS
    assert int(receipt["amount"]) == int(receipt["max_amount"])
    assert int(receipt["max_amount"]) >= MAX_TOKENS * PRICE_ATOMIC
    assert balance(stack, stack.pay_to) == seller_before + int(receipt["amount"])
    logged = log.read_text()
    assert "Exception in ASGI application" not in logged
    assert "Traceback" not in logged
