"""Sections 1, 2 and 6: a real uvicorn server over loopback, the client in this process.

1. Streaming throughput: the same SSE app bare and under X402Meter (paid, verified by the
   local facilitator), alternating rounds. The rate is taken from the first event to the
   last byte: the payment's round trips happen before the first event and are section 2.
2. Time to first event (and to the last byte) on the same endpoint, streaming like a model
   (events some milliseconds apart): bare, X402Meter, and the x402 SDK's
   ``PaymentMiddlewareASGI``; and the facilitator's ``/verify`` round trip, timed from here
   with the client X402Meter uses, in the same rounds.
6. Memory: the server's RSS before and while many paid streams are held open (the app holds
   them after a few events until ``POST /release``), bare and metered.

Every paid request's receipt is followed to its end (settled on the local chain) before the
figures count: a benchmark of requests that failed to settle would measure nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from x402.http.utils import decode_payment_required_header
from x402.schemas import PaymentRequired

from bench.common import Payer, Summary
from bench.http_client import Exchange
from bench.servers import Server, rss_bytes
from bench.sse_server import PATH
from x402_meter.facilitator import FacilitatorClient

CHAT = json.dumps(
    {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "What is x402? Answer at length."}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
).encode()
RECEIPT = "x-payment-receipt"


@dataclass(frozen=True)
class LoopbackSizes:
    throughput_events: int = 8000
    throughput_rounds: int = 20
    ttfb_events: int = 50
    ttfb_interval_ms: float = 10.0
    ttfb_rounds: int = 15
    streams: int = 200
    hold_after: int = 3


def _paid(header: str) -> list[tuple[str, str]]:
    return [("payment-signature", header)]


async def challenge(server: Server) -> str:
    """The ``PAYMENT-REQUIRED`` header of the server's 402 for the streaming route."""
    exchange = await Exchange(server.host, server.port, f"{PATH}?events=1", body=CHAT).run()
    assert exchange.status == 402, f"{server.name}: expected 402, got {exchange.status}"
    return exchange.headers["payment-required"]


async def paid_headers(server: Server, payer: Payer, count: int) -> list[str]:
    return await payer.headers_for_challenge(await challenge(server), count)


async def stream(
    server: Server, target: str, header: str | None = None, *, complete: bool = True
) -> Exchange:
    exchange = Exchange(
        server.host, server.port, target, headers=_paid(header) if header else (), body=CHAT
    )
    await exchange.run()
    assert exchange.status == 200, f"{server.name}: HTTP {exchange.status} {exchange.headers}"
    if complete:
        assert b"data: [DONE]" in exchange.tail, f"{server.name}: cut short: {exchange.tail!r}"
    return exchange


def server_cpu_ns(pid: int) -> int:
    """Nanoseconds the process's main thread (uvicorn's event loop) has run on a CPU."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0])


def _rate(exchange: Exchange) -> float:
    """MB/s from the first event to the last byte."""
    return exchange.size / 1e6 / (exchange.elapsed - exchange.first_event)


@dataclass(frozen=True)
class Variant:
    """One server in a comparison, and whether its requests pay."""

    label: str
    server: Server
    paid: bool


Receipt = tuple[Server, str]
"""A metered server and the receipt path one of its answers named."""


@dataclass
class Throughput:
    megabytes: float
    events: int
    rates: dict[str, Summary]
    """MB/s per variant, from the first event to the last byte."""
    ratios: dict[str, Summary]
    """Per round, each variant's MB/s over the first variant's (the bare app) in that round."""
    cpu_ms: dict[str, Summary]
    """Milliseconds of CPU the server's main thread (its event loop) spent per answer, its
    payment's verification and settlement included."""
    receipts: list[Receipt]


async def throughput(variants: Sequence[Variant], payer: Payer, sizes: LoopbackSizes) -> Throughput:
    """Stream the same answer from each variant in turn, round after round.

    The order rotates every round, so a drift in the machine's load spreads over all of them.
    """
    warm = 2
    count = sizes.throughput_rounds + warm
    headers = {
        v.label: await paid_headers(v.server, payer, count) if v.paid else [] for v in variants
    }
    target = f"{PATH}?events={sizes.throughput_events}"
    receipts: list[Receipt] = []
    rates: dict[str, list[float]] = {v.label: [] for v in variants}
    ratios: dict[str, list[float]] = {v.label: [] for v in variants}
    cpu: dict[str, list[float]] = {v.label: [] for v in variants}
    size = 0
    async with httpx.AsyncClient(timeout=60) as client:
        for index in range(count):
            measured: dict[str, float] = {}
            for step in range(len(variants)):
                variant = variants[(index + step) % len(variants)]
                header = headers[variant.label][index] if variant.paid else None
                cpu_before = server_cpu_ns(variant.server.pid)
                exchange = await stream(variant.server, target, header)
                if variant.paid:
                    # Settled before the next answer starts: a settlement (the facilitator's
                    # and the chain's work too) must not run during someone else's stream.
                    receipt = (variant.server, exchange.headers[RECEIPT])
                    await final_status(client, *receipt)
                    receipts.append(receipt)
                if index >= warm:
                    used = server_cpu_ns(variant.server.pid) - cpu_before
                    cpu[variant.label].append(used / 1e6)
                measured[variant.label] = _rate(exchange)
                size = exchange.size
            if index >= warm:
                for label, rate in measured.items():
                    rates[label].append(rate)
                    ratios[label].append(rate / measured[variants[0].label])
    return Throughput(
        megabytes=size / 1e6,
        events=sizes.throughput_events,
        rates={label: Summary.of(samples) for label, samples in rates.items()},
        ratios={label: Summary.of(samples) for label, samples in ratios.items()},
        cpu_ms={label: Summary.of(samples) for label, samples in cpu.items()},
        receipts=receipts,
    )


@dataclass
class FirstByte:
    events: int
    interval_ms: float
    first_event: dict[str, Summary]
    """Milliseconds from connecting to the first event, per variant."""
    last_byte: dict[str, Summary]
    verify: Summary
    """Milliseconds of one ``/verify`` round trip, from this process."""
    added: Summary
    """Per round: X402Meter's first event minus the bare app's, in milliseconds."""
    beyond_verify: Summary
    """Per round: what X402Meter added minus that round's verify round trip."""
    receipts: list[Receipt]
    sdk_settled: int


async def first_byte(
    bare: Server,
    meter: Server,
    sdk: Server,
    payer: Payer,
    facilitator_url: str,
    facilitator_api_key: str,
    sizes: LoopbackSizes,
) -> FirstByte:
    warm = 2
    count = sizes.ttfb_rounds + warm
    meter_challenge = await challenge(meter)
    meter_headers = await payer.headers_for_challenge(meter_challenge, count)
    sdk_headers = await paid_headers(sdk, payer, count)
    required = decode_payment_required_header(meter_challenge)
    assert isinstance(required, PaymentRequired)
    verify_payloads = await payer.payloads(required, count)
    facilitator = FacilitatorClient(facilitator_url, api_key=facilitator_api_key)
    target = f"{PATH}?events={sizes.ttfb_events}&interval={sizes.ttfb_interval_ms}"
    first: dict[str, list[float]] = {"bare": [], "X402Meter": [], "SDK": []}
    last: dict[str, list[float]] = {name: [] for name in first}
    verify: list[float] = []
    added: list[float] = []
    beyond: list[float] = []
    receipts: list[Receipt] = []
    sdk_settled = 0
    variants = ("bare", "X402Meter", "SDK", "verify")
    try:
        for index in range(count):
            seen: dict[str, float] = {}
            for step in range(len(variants)):
                name = variants[(index + step) % len(variants)]  # rotate the order per round
                if name == "verify":
                    started = time.perf_counter()
                    result = await facilitator.verify(verify_payloads[index], required.accepts[0])
                    elapsed = time.perf_counter() - started
                    assert result.is_valid, result.invalid_reason
                    if index >= warm:
                        verify.append(elapsed * 1000)
                    continue
                if name == "bare":
                    exchange = await stream(bare, target)
                elif name == "X402Meter":
                    exchange = await stream(meter, target, meter_headers[index])
                    receipts.append((meter, exchange.headers[RECEIPT]))
                else:
                    exchange = await stream(sdk, target, sdk_headers[index])
                    sdk_settled += "payment-response" in exchange.headers
                seen[name] = exchange.first_event * 1000
                if index >= warm:
                    first[name].append(exchange.first_event * 1000)
                    last[name].append(exchange.elapsed * 1000)
            if index >= warm:
                added.append(seen["X402Meter"] - seen["bare"])
                beyond.append(added[-1] - verify[-1])
    finally:
        await facilitator.aclose()
    return FirstByte(
        events=sizes.ttfb_events,
        interval_ms=sizes.ttfb_interval_ms,
        first_event={name: Summary.of(samples) for name, samples in first.items()},
        last_byte={name: Summary.of(samples) for name, samples in last.items()},
        verify=Summary.of(verify),
        added=Summary.of(added),
        beyond_verify=Summary.of(beyond),
        receipts=receipts,
        sdk_settled=sdk_settled,
    )


@dataclass
class Memory:
    streams: int
    idle_rss: int
    busy_rss: int
    after_rss: int
    receipts: list[Receipt] = field(default_factory=list)

    @property
    def per_stream_kib(self) -> float:
        return (self.busy_rss - self.idle_rss) / self.streams / 1024


async def memory(server: Server, payer: Payer | None, sizes: LoopbackSizes) -> Memory:
    """RSS of ``server`` idle and with ``sizes.streams`` paid streams held.

    The warm-up holds as many streams at once first, so that what a server grows once (its
    connection pools, the allocator's arenas) is in the idle figure, not in the per-stream one.
    """
    warm = sizes.streams
    total = warm + sizes.streams
    headers: list[str | None]
    if payer is not None:
        headers = list(await paid_headers(server, payer, total))
    else:
        headers = [None] * total
    target = f"{PATH}?events={sizes.hold_after + 8}&hold={sizes.hold_after}"
    receipts: list[Receipt] = []

    async def hold(batch: Sequence[str | None]) -> list[Exchange]:
        exchanges = [
            Exchange(server.host, server.port, target, headers=_paid(h) if h else (), body=CHAT)
            for h in batch
        ]
        await asyncio.gather(*(exchange.start() for exchange in exchanges))
        for exchange in exchanges:
            assert exchange.status == 200, f"{server.name}: HTTP {exchange.status}"
            assert exchange.first_event == exchange.first_event, "no event before the hold"
        return exchanges

    async def release(exchanges: Sequence[Exchange]) -> None:
        answer = await Exchange(server.host, server.port, "/release").run()
        assert answer.status == 200
        await asyncio.gather(*(exchange.finish() for exchange in exchanges))
        for exchange in exchanges:
            assert b"data: [DONE]" in exchange.tail, f"{server.name}: {exchange.tail!r}"
            if RECEIPT in exchange.headers:
                receipts.append((server, exchange.headers[RECEIPT]))

    await release(await hold(headers[:warm]))
    await asyncio.sleep(0.5)  # let the warm-up's settlements leave
    idle = rss_bytes(server.pid)
    held = await hold(headers[warm:])
    busy = rss_bytes(server.pid)
    await release(held)
    return Memory(sizes.streams, idle, busy, rss_bytes(server.pid), receipts)


async def final_status(
    client: httpx.AsyncClient, server: Server, path: str, rounds: int = 10
) -> str:
    """Long-poll a receipt until it is final (each poll waits up to 30 s on the server)."""
    status = "pending"
    for _ in range(rounds):
        answer = await client.get(f"{server.url}{path}", params={"wait": 30})
        status = str(answer.json()["status"])
        if status != "pending":
            break
    return status


async def outcomes(receipts: Sequence[Receipt]) -> Counter[str]:
    """Follow each receipt to its final state; how many ended in each."""
    limiter = asyncio.Semaphore(32)

    async def final(client: httpx.AsyncClient, server: Server, path: str) -> str:
        async with limiter:
            return await final_status(client, server, path)

    async with httpx.AsyncClient(timeout=60) as client:
        statuses = await asyncio.gather(*(final(client, *receipt) for receipt in receipts))
    return Counter(statuses)
