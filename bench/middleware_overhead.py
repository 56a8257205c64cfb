"""Section 3: the CPU time X402Meter adds to one paid request, the facilitator left out.

    .venv/bin/python -m bench.middleware_overhead [--requests 2000] [--events 20]

The same SSE app (the OpenAI chat chunks of bench/sse_server.py, then usage and ``[DONE]``)
is called in-process, with no server and no network, bare and behind X402Meter with a fresh
SDK-signed ``upto`` payment each time. The facilitator is an in-process stand-in that accepts
at once (this micro-benchmark only), the ledger a MemoryStore, so what is timed is the
middleware's own work: decoding and checking the payment, reserving it, the ledger rows,
metering, and the settlement job it hands off (drained inside the timed region). Bare and
paid requests alternate; each is timed with ``time.thread_time`` (CPU of this thread: the
whole request runs on it) and ``time.perf_counter``. Two smaller series with ten times the
events give the cost of one more event: with the cap out of reach, and with it checked as
the stream grows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from x402.schemas import (
    PaymentRequired,
)

from bench.common import Payer, Summary
from bench.sse_server import DONE, EVENT, PRICE_PER_TOKEN, usage_event
from x402_meter import Asset, MemoryStore, TokenPrice, X402Meter
from x402_meter.devstack.accounts import PAYERS, SELLER
from x402_meter.devstack.instant_facilitator import DEV_NETWORK, InstantFacilitator
from x402_meter.routing import DEFAULT_SPEC

NETWORK = DEV_NETWORK
ASSET = Asset("0x5FbDB2315678afecb367f032d93F642f64180aa3", "USD Coin", "2", 6)


def sse_app(events: int) -> Any:
    usage = usage_event(events)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for _ in range(events):
            await send({"type": "http.response.body", "body": EVENT, "more_body": True})
        await send({"type": "http.response.body", "body": usage, "more_body": True})
        await send({"type": "http.response.body", "body": DONE})

    return app


def metered(app: Any, max_tokens: int = 16384) -> X402Meter:
    return X402Meter(
        app,
        pay_to=SELLER.address,
        network=NETWORK,
        asset=ASSET,
        price_per_token=PRICE_PER_TOKEN,
        max_tokens=max_tokens,
        routes=["POST /v1/chat/completions"],
        store=MemoryStore(),
        facilitator=InstantFacilitator(),
    )


async def signed_headers(app: X402Meter, count: int) -> list[bytes]:
    offer = await app.runtime.offer(DEFAULT_SPEC, TokenPrice.flat(PRICE_PER_TOKEN))
    required = offer.payment_required("http://bench/v1/chat/completions", "payment required")
    payer = Payer(NETWORK, ASSET.address, PAYERS[0].private_key)
    headers = await payer.headers(PaymentRequired(accepts=required.accepts), count)
    return [header.encode() for header in headers]


async def call(app: Any, header: bytes | None, body: bytes = b"{}") -> None:
    headers = [(b"payment-signature", header)] if header else []
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), *headers],
        "scheme": "http",
        "server": ("bench", 80),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    assert statuses == [200], statuses


SAMPLES = ("bare_cpu", "paid_cpu", "bare_wall", "paid_wall")


@dataclass(frozen=True)
class Series:
    events: int
    samples: dict[str, list[float]]
    """Microseconds per request, by SAMPLES name."""

    def summary(self, name: str) -> Summary:
        return Summary.of(self.samples[name])

    @property
    def added_cpu(self) -> float:
        """Microseconds of CPU: median of the paid requests minus median of the bare ones."""
        return self.summary("paid_cpu").median - self.summary("bare_cpu").median

    @property
    def added_wall(self) -> float:
        return self.summary("paid_wall").median - self.summary("bare_wall").median

    @classmethod
    def pooled(cls, runs: list[Series]) -> Series:
        """The samples of several runs (of the same series) as one."""
        return cls(
            runs[0].events,
            {name: [x for run in runs for x in run.samples[name]] for name in SAMPLES},
        )


DORMANT_CAP = 10_000_000
"""max_tokens so high that the byte bound rules the cap out: no running count is taken."""


@dataclass(frozen=True)
class Overhead:
    series: Series
    """The answer of ``events`` events: the per-request figure."""
    longer: Series
    """Ten times the events, max_tokens out of reach: the cap is never looked at."""
    capped: Series
    """Ten times the events under max_tokens=16384: past 16 KB the cap is checked as the
    stream grows (a running count of the text: OpenAI streams report usage at the end)."""

    def per_event(self, longer: Series) -> float:
        """Microseconds of CPU X402Meter adds per event of the answer."""
        return (longer.added_cpu - self.series.added_cpu) / (longer.events - self.series.events)


async def series(requests: int, events: int, max_tokens: int = 16384) -> Series:
    bare = sse_app(events)
    paid = metered(bare, max_tokens)
    warm = min(50, requests)
    headers = await signed_headers(paid, requests + warm)
    samples: dict[str, list[float]] = {
        "bare_cpu": [],
        "paid_cpu": [],
        "bare_wall": [],
        "paid_wall": [],
    }
    cpu, wall = time.thread_time, time.perf_counter
    for index, header in enumerate(headers):
        cpu_started, wall_started = cpu(), wall()
        await call(bare, None)
        bare_cpu, bare_wall = cpu() - cpu_started, wall() - wall_started
        cpu_started, wall_started = cpu(), wall()
        await call(paid, header)
        await paid.runtime.settler.drain()
        paid_cpu, paid_wall = cpu() - cpu_started, wall() - wall_started
        if index >= warm:
            samples["bare_cpu"].append(bare_cpu * 1e6)
            samples["paid_cpu"].append(paid_cpu * 1e6)
            samples["bare_wall"].append(bare_wall * 1e6)
            samples["paid_wall"].append(paid_wall * 1e6)
    return Series(events, samples)


async def measure(requests: int, events: int) -> Overhead:
    longer = max(requests // 5, 50)
    return Overhead(
        series=await series(requests, events),
        longer=await series(longer, events * 10, DORMANT_CAP),
        capped=await series(longer, events * 10),
    )


def report(result: Overhead) -> None:
    for run in (result.series, result.longer, result.capped):
        cells = {name: run.summary(name).cell() for name in SAMPLES}
        print(f"{run.events} events per answer")
        print(f"  CPU  bare {cells['bare_cpu']} us   X402Meter {cells['paid_cpu']} us")
        print(f"  wall bare {cells['bare_wall']} us   X402Meter {cells['paid_wall']} us")
        print(f"  added: CPU {run.added_cpu:.1f} us, wall {run.added_wall:.1f} us (medians)")
    print(f"added per event: {result.per_event(result.longer):.2f} us of CPU")
    print(f"added per event, cap checked: {result.per_event(result.capped):.2f} us of CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the samples as JSON")
    args = parser.parse_args()
    result = asyncio.run(measure(args.requests, args.events))
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        report(result)


if __name__ == "__main__":
    main()
