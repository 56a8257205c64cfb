"""X402Meter's hot-path shortcuts give what the plain computations give.

The meter is fed in batches (the chunks that went out since it was last fed): the count at
the end, at a checkpoint and at the cap is the one of the whole body. The resource URL is
computed once per distinct request line and host, and remembered.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
from eth_account import Account
from starlette.datastructures import URL
from x402 import x402Client
from x402.http.utils import encode_payment_signature_header
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import (
    PaymentRequired,
)

from x402_meter import Asset, MemoryStore, TokenPrice, X402Meter
from x402_meter.devstack.accounts import PAYERS, SELLER
from x402_meter.devstack.instant_facilitator import DEV_NETWORK, InstantFacilitator
from x402_meter.metering import ResponseInfo, auto_meter, estimate_tokens
from x402_meter.pipeline.response_tap import CAP_LOOK_BYTES, METER_BATCH_BYTES, ResponseTap
from x402_meter.routing import DEFAULT_SPEC
from x402_meter.store import LedgerState, PaymentRecord

NETWORK = DEV_NETWORK
ASSET = Asset("0x5FbDB2315678afecb367f032d93F642f64180aa3", "USD Coin", "2", 6)


@pytest.mark.parametrize(
    "scope",
    [
        {"headers": [(b"host", b"example.com")], "path": "/v1/chat", "query_string": b""},
        {"headers": [(b"host", b"example.com:8080")], "path": "/a b?#", "query_string": b"x=1"},
        {"headers": [], "path": "/v1", "server": ("10.0.0.1", 80), "query_string": b""},
        {"headers": [], "path": "/v1", "server": ["::1", 8000], "scheme": "https"},
        {"headers": [], "path": "//v1", "query_string": b"q"},
        {
            "headers": [(b"host", b"[::1]:99999")],
            "path": "/",
            "server": ("h", 443),
            "scheme": "https",
        },
    ],
)
def test_the_resource_url_is_starlettes(scope: dict[str, Any]) -> None:
    meter = metered(app_with([]))
    full = {"type": "http", **scope}
    assert meter.resource_url(full) == str(URL(scope=full))
    assert meter.resource_url(full) == str(URL(scope=full))  # remembered, still the same


# -- a whole request, in-process --------------------------------------------------------------


def app_with(chunks: list[bytes]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-type", b"text/event-stream")]})
        try:
            for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except OSError:  # StreamCapped, as when a client leaves: the app stops
            return

    return app


def metered(app: Any, **options: Any) -> X402Meter:
    return X402Meter(
        app,
        pay_to=SELLER.address,
        network=NETWORK,
        asset=ASSET,
        price_per_token="0.000002",
        routes=["POST /v1/chat/completions"],
        store=MemoryStore(),
        facilitator=InstantFacilitator(),
        **options,
    )


async def payment_headers(meter: X402Meter, count: int) -> list[bytes]:
    """``count`` SDK-signed payments of the meter's offer, as ``PAYMENT-SIGNATURE`` values."""
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
    """One paid chat request through ``meter``, called as a server calls it; what it sent,
    once its settlement is done."""
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


async def paid_request(meter: X402Meter) -> tuple[list[dict[str, Any]], PaymentRecord]:
    (header,) = await payment_headers(meter, 1)
    sent = await serve(meter, header)
    rows = await meter.runtime.store.list()
    assert len(rows) == 1
    return sent, rows[0]


def chunk(text: str) -> bytes:
    return (
        b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"%s"}}]}\n\n'
        % (text.encode())
    )


def usage_of(body: bytes) -> Any:
    meter = auto_meter(ResponseInfo(200, "text/event-stream", None, b'{"messages": []}'))
    meter.feed(body)
    return meter.finish()


@pytest.mark.parametrize("size", [1, 7, 300, METER_BATCH_BYTES + 5])
def test_a_long_stream_is_counted_whole_whatever_its_chunks(size: int) -> None:
    text = "".join(f" word{index}" for index in range(3000))
    body = b"".join(chunk(text[i : i + 5]) for i in range(0, len(text), 5))
    body += b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}\n\n'
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    assert len(body) > 3 * METER_BATCH_BYTES
    sent, row = asyncio.run(paid_request(metered(app_with(chunks), max_tokens=10**7)))
    assert b"".join(m.get("body", b"") for m in sent[1:]) == body  # forwarded untouched
    assert (row.state, row.input_tokens, row.output_tokens) == (LedgerState.SETTLED, 3, 9)


def test_a_stream_without_usage_is_estimated_from_all_it_sent() -> None:
    text = "".join(f" token{index}" for index in range(4000))
    body = b"".join(chunk(text[i : i + 7]) for i in range(0, len(text), 7))
    chunks = [body[i : i + 333] for i in range(0, len(body), 333)]
    _, row = asyncio.run(paid_request(metered(app_with(chunks), max_tokens=10**7)))
    expected = usage_of(body)
    assert row.output_tokens == expected.output_tokens == estimate_tokens(text)
    assert row.amount == 2 * (expected.input_tokens + expected.output_tokens)


def test_checkpoints_count_what_was_sent_before_each_chunk() -> None:
    text = "".join(f" t{index}" for index in range(2000))
    body = b"".join(chunk(text[i : i + 4]) for i in range(0, len(text), 4))
    chunks = [body[i : i + 100] for i in range(0, len(body), 100)]
    saved: list[PaymentRecord] = []

    class Recording(MemoryStore):
        async def save(self, record: PaymentRecord) -> None:
            saved.append(record)
            await super().save(record)

    meter = metered(app_with(chunks), max_tokens=10**7, checkpoint_every=0.0)
    meter.runtime.store = meter.runtime.settler._store = Recording()
    asyncio.run(paid_request(meter))
    checkpoints = [r for r in saved if r.state is LedgerState.VERIFIED and r.amount is not None]
    assert len(checkpoints) == len(chunks)
    for index, row in enumerate(checkpoints):  # before chunk `index` goes out: all up to it
        assert row.output_tokens == usage_of(b"".join(chunks[: index + 1])).output_tokens


def test_the_cap_ends_a_stream_that_reports_no_usage() -> None:
    body = b"".join(chunk(" token") for _ in range(5000))
    chunks = [body[i : i + 250] for i in range(0, len(body), 250)]
    sent, row = asyncio.run(paid_request(metered(app_with(chunks), max_tokens=500)))
    assert row.amount == row.max_amount == 1000
    assert sent[-1].get("more_body") is False  # the last chunk that went out ended it
    assert len(sent) - 1 < len(chunks)


@pytest.mark.parametrize("max_tokens", [300, 2000, 9000])
def test_a_steady_stream_is_ended_within_two_kib_past_the_cap(max_tokens: int) -> None:
    chunks = [chunk(" token") for _ in range(3 * max_tokens)]
    sent, row = asyncio.run(paid_request(metered(app_with(chunks), max_tokens=max_tokens)))
    served = usage_of(b"".join(message.get("body", b"") for message in sent[1:]))
    assert row.amount == row.max_amount
    # one token per chunk: past the cap, at most the chunks of one look's spacing, and the
    # chunk that crossed the last look (it goes out, ending the answer)
    slack = CAP_LOOK_BYTES // len(chunks[0]) + 1
    assert max_tokens <= served.input_tokens + served.output_tokens <= max_tokens + slack


def test_the_heartbeat_checkpoints_what_went_out_while_the_stream_runs() -> None:
    text = "".join(f" t{index}" for index in range(600))
    body = b"".join(chunk(text[i : i + 4]) for i in range(0, len(text), 4))
    first, rest = body[: len(body) // 2], body[len(body) // 2 :]
    checkpointed = asyncio.Event()
    saved: list[PaymentRecord] = []

    class Recording(MemoryStore):
        async def save(self, record: PaymentRecord) -> None:
            saved.append(record)
            if record.state is LedgerState.VERIFIED and record.amount is not None:
                checkpointed.set()
            await super().save(record)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-type", b"text/event-stream")]})
        for index in range(0, len(first), 100):  # chunks that stay below one meter batch
            piece = first[index : index + 100]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await checkpointed.wait()  # the timer's checkpoint, taken beside the stream
        await send({"type": "http.response.body", "body": rest})

    meter = metered(app, max_tokens=10**7, checkpoint_every=0.01)
    meter.runtime.store = meter.runtime.settler._store = Recording()
    _, row = asyncio.run(paid_request(meter))
    checkpoint = next(r for r in saved if r.state is LedgerState.VERIFIED and r.amount is not None)
    assert checkpoint.output_tokens == usage_of(first).output_tokens > 0
    assert row.output_tokens == usage_of(body).output_tokens > checkpoint.output_tokens


def test_chunks_between_looks_at_the_cap_take_the_fast_path(monkeypatch: Any) -> None:
    slow: list[str] = []
    send_slowly = ResponseTap._send_slowly

    async def counted(self: ResponseTap, message: Any) -> None:
        slow.append(message["type"])
        await send_slowly(self, message)

    monkeypatch.setattr(ResponseTap, "_send_slowly", counted)
    chunks = [chunk(f" word{index}") for index in range(40)]  # ~3 KiB, under one batch
    sent, row = asyncio.run(paid_request(metered(app_with(chunks), max_tokens=10**7)))
    assert len(sent) == len(chunks) + 2
    assert row.output_tokens == usage_of(b"".join(chunks)).output_tokens
    # the start, and a look at the cap at 2 KiB: every other chunk went straight through
    assert slow.count("http.response.start") == 1
    assert slow.count("http.response.body") <= 2
