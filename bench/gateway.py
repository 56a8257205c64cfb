"""The gateway's cost, side by side with calling the upstream directly.

    .venv/bin/python -m bench.gateway [--rounds 10] [--events 8000] [--cpu-requests 200]

The upstream is ``bench/sse_server.py`` (bare, in its own uvicorn process, on the servers'
core). Three ways to its answer, on the local stack: **direct** (unpaid); **X402Meter**,
the same app behind the middleware in its own process (paid: what the payment itself
costs); and the **gateway**, ``x402-meter gateway`` in its own process in front of the
bare upstream (paid; on any core: on two cores it shares them with the harness and the
facilitator). Per round, each way once, in a rotating order:

- **time to first event**: a 50-event stream, 10 ms apart: from connecting to the first
  ``data:`` (a paid way's verify round trip included);
- **throughput**: an ``--events`` long stream sent back to back, MB/s from the first event
  to the last byte; the ratio to direct taken per round.

Then **CPU per request**: ``--cpu-requests`` 20-event answers each way, one after another
(paid ones settled on chain), and the CPU time of all the serving process's threads over
them (``/proc/<pid>/task/*/schedstat``), divided by the requests. Payments are signed
before any clock starts, by the SDK's client.

Last, **in process** (``--only-in-process`` runs only this, no chain or server): the CPU
of one paid request through the gateway's app, beside ``X402Meter`` alone and the bare
app, with ``time.thread_time`` as section 3 of ``python -m bench`` measures it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx
from eth_account import Account

from bench.common import Payer, Summary, machine
from bench.http_client import Exchange
from bench.servers import free_port, pin_client, sse_server
from x402_meter.devstack import LocalStack, local_stack
from x402_meter.devstack.dev_report import exports
from x402_meter.devstack.processes import ChildProcess, uvicorn_ready

MODEL: Final = "gpt-4o-2024-08-06"
PATH: Final = "/v1/chat/completions"
CONFIG: Final = """
[gateway]
max_tokens = 16384
shape_requests = false   # the bare upstream reports usage by itself

[upstreams.bench]
kind = "openai"
base_url = "{upstream}"
paths = ["{path}"]
read_timeout = 60

[[upstreams.bench.plans]]
models = ["{model}"]
price_per_token = "0.000002"
"""


QUESTION: Final = b'{"model": "bench"}'
"""The gateway's request in process: a model to price by, no prompt (as section 3's)."""


def body(events: int, interval_ms: float = 0) -> bytes:
    bench = {"events": events, "interval": interval_ms}
    question = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({**question, "x_bench": bench}).encode()


@dataclass
class Gateway:
    host: str
    port: int
    pid: int


@contextmanager
def gateway_process(stack: LocalStack, upstream: str, scratch: Path) -> Iterator[Gateway]:
    port = free_port()
    config = scratch / "gateway.toml"
    config.write_text(CONFIG.format(upstream=upstream, path=PATH, model=MODEL))
    env = {
        **os.environ,
        **exports(stack),
        "X402_PAY_TO": Account.create().address,
        "X402_METER_STORE": f"sqlite:///{scratch / 'gateway.sqlite3'}",
    }
    args = [sys.executable, "-m", "x402_meter", "gateway", "--config", str(config)]
    process = ChildProcess(
        [*args, "--port", str(port)],
        name="gateway",
        env=env,
        log_path=scratch / "gateway.log",
        merge_stderr=True,
    )
    try:
        process.wait_for_line(uvicorn_ready(), timeout=60)
        yield Gateway("127.0.0.1", port, process.pid)
    finally:
        process.stop()


def process_cpu_ns(pid: int) -> int:
    """Nanoseconds all of a process's threads have run on a CPU."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


async def exchange(host: str, port: int, content: bytes, header: str | None = None) -> Exchange:
    headers = [("payment-signature", header)] if header else []
    done = await Exchange(host, port, PATH, headers=headers, body=content).run()
    assert done.status == 200, (done.status, done.headers)
    assert b"data: [DONE]" in done.tail, done.tail
    return done


@dataclass
class Target:
    """One way to get the answer: straight from the upstream, from the upstream behind its
    own ``X402Meter``, or through the gateway."""

    name: str
    host: str
    port: int
    pid: int
    paid: bool
    headers: dict[bytes, list[str]] = field(default_factory=dict)
    """Unused payment headers, by request body."""
    receipts: list[str] = field(default_factory=list)

    async def sign(self, payer: Payer, content: bytes, count: int) -> None:
        if not self.paid:
            return
        async with httpx.AsyncClient() as client:
            challenge = await client.post(
                f"http://{self.host}:{self.port}{PATH}",
                content=content,
                headers={"content-type": "application/json"},
            )
        assert challenge.status_code == 402, challenge.text
        required = challenge.headers["payment-required"]
        self.headers[content] = await payer.headers_for_challenge(required, count)

    async def ask(self, content: bytes) -> Exchange:
        header = self.headers[content].pop() if self.paid else None
        done = await exchange(self.host, self.port, content, header)
        if self.paid:
            self.receipts.append(done.headers["x-payment-receipt"])
        return done

    async def settle_all(self) -> None:
        """Wait for every answer so far to be settled (before the next round starts)."""
        async with httpx.AsyncClient(timeout=60) as client:
            for path in self.receipts:
                answer = await client.get(
                    f"http://{self.host}:{self.port}{path}", params={"wait": 30}
                )
                assert answer.json()["status"] == "settled", answer.text
        self.receipts.clear()


def rate(done: Exchange) -> float:
    return done.size / 1e6 / (done.elapsed - done.first_event)


async def run(rounds: int, events: int, cpu_requests: int) -> str:
    pin_client()
    with tempfile.TemporaryDirectory() as scratch_dir, local_stack() as stack:
        scratch = Path(scratch_dir)
        payer = Payer(stack.network, stack.asset, stack.payer_private_keys[0])
        meter_store = f"sqlite:///{scratch / 'meter.sqlite3'}"
        with (
            sse_server("bare", stack, scratch) as upstream,
            sse_server("meter", stack, scratch, store_url=meter_store) as metered,
            gateway_process(stack, upstream.url, scratch) as gateway,
        ):
            targets = [
                Target("direct", upstream.host, upstream.port, upstream.pid, paid=False),
                Target("X402Meter", metered.host, metered.port, metered.pid, paid=True),
                Target("gateway", gateway.host, gateway.port, gateway.pid, paid=True),
            ]
            return await measure(payer, targets, rounds, events, cpu_requests)


async def measure(
    payer: Payer, targets: list[Target], rounds: int, events: int, cpu_requests: int
) -> str:
    first, long, short = body(50, 10), body(events), body(20)
    for target in targets:
        await target.sign(payer, first, rounds)
        await target.sign(payer, long, rounds)
        await target.sign(payer, short, cpu_requests + 1)
        await target.ask(short)  # warm up
        await target.settle_all()
    names = [target.name for target in targets]
    first_ms: dict[str, list[float]] = {name: [] for name in names}
    rates: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    added_ms: dict[str, list[float]] = {name: [] for name in names}

    async def settled(target: Target, content: bytes) -> Exchange:
        """One answer, asked once every earlier one is settled: a settlement in flight
        (a transaction on the chain) would slow this one's verify and share its cores."""
        for each in targets:
            await each.settle_all()
        return await target.ask(content)

    for index in range(rounds):
        order = targets[index % 3 :] + targets[: index % 3]  # each goes first in turn
        for target in order:
            done = await settled(target, first)
            first_ms[target.name].append(done.first_event * 1000)
        round_rates = {}
        for target in order:
            round_rates[target.name] = rate(await settled(target, long))
            rates[target.name].append(round_rates[target.name])
        for name in names:
            ratios[name].append(round_rates[name] / round_rates["direct"])
            added_ms[name].append(first_ms[name][-1] - first_ms["direct"][-1])
    cpu_ms = {}
    for target in targets:
        before = process_cpu_ns(target.pid)
        for _ in range(cpu_requests):
            await target.ask(short)
        await target.settle_all()
        cpu_ms[target.name] = (process_cpu_ns(target.pid) - before) / cpu_requests / 1e6
    lines = [
        f"# The gateway, side by side with its upstream ({machine()})",
        "",
        f"{rounds} rounds, each way once per round in a rotating order; time to first event "
        f"over 50-event streams 10 ms apart, throughput over {events}-event streams sent "
        f"back to back; CPU over {cpu_requests} 20-event answers (paid ones settled on "
        "chain), all threads of the serving process.",
        "",
        "| way | first event, ms | added to direct, ms | MB/s | ratio to direct | CPU per"
        " request, ms |",
        "|---|---|---|---|---|---|",
    ]
    notes = {
        "direct": "the upstream",
        "X402Meter": "its app included",
        "gateway": "the gateway alone",
    }
    for name in names:
        lines.append(
            f"| {name} | {Summary.of(first_ms[name]).cell(1)}"
            f" | {Summary.of(added_ms[name]).cell(1)}"
            f" | {Summary.of(rates[name]).cell(1)} | {Summary.of(ratios[name]).cell(2)}"
            f" | {cpu_ms[name]:.2f} ({notes[name]}) |"
        )
    return "\n".join(lines)


# -- in process: the CPU the gateway adds to a request, no server, no network --------------


async def in_process(requests: int, events: int) -> str:
    """``time.thread_time`` of one request: the bare upstream app called directly, behind
    ``X402Meter`` alone (section 3's setup), and through the whole ``Gateway`` (its upstream
    reached through ``httpx.ASGITransport``), paid with fresh SDK-signed payments; the
    facilitator an in-process stand-in that accepts at once, the ledger a MemoryStore, the
    settlement drained inside the timed region. What the network and uvicorn cost is left
    out: the loopback figures above have them."""
    from bench.middleware_overhead import ASSET, NETWORK, call, metered, signed_headers, sse_app
    from x402_meter import MemoryStore
    from x402_meter.devstack.accounts import SELLER
    from x402_meter.devstack.instant_facilitator import InstantFacilitator
    from x402_meter.gateway import Gateway as GatewayApp
    from x402_meter.gateway import parse_config

    upstream_app = sse_app(events)
    config = parse_config(
        {
            "gateway": {
                "pay_to": SELLER.address,
                "network": NETWORK,
                "store": "memory://",
                "max_tokens": 16384,
                "shape_requests": False,
                "metrics": True,
                "asset": {"address": ASSET.address, "name": ASSET.name, "version": "2"},
            },
            "upstreams": {
                "bench": {
                    "kind": "openai",
                    "base_url": "http://upstream.bench",
                    "paths": [PATH],
                    "plans": [{"models": ["*"], "price_per_token": "0.000002"}],
                }
            },
        },
        {},
        base_dir=Path(),
    )
    gateway = GatewayApp(
        config,
        store=MemoryStore(),
        facilitator=InstantFacilitator(),
        upstream_transport=httpx.ASGITransport(app=upstream_app),
    )
    meter = metered(upstream_app)
    warm = min(50, requests)
    meter_headers = await signed_headers(meter, requests + warm)
    gateway_headers = await signed_headers(gateway.meter, requests + warm)
    samples: dict[str, list[float]] = {"bare": [], "meter": [], "gateway": []}
    cpu = time.thread_time
    for index in range(requests + warm):
        started = cpu()
        await call(upstream_app, None)
        bare = cpu() - started
        started = cpu()
        await call(meter, meter_headers[index])
        await meter.runtime.settler.drain()
        metered_cpu = cpu() - started
        started = cpu()
        await call(gateway, gateway_headers[index], QUESTION)
        await gateway.meter.runtime.settler.drain()
        gateway_cpu = cpu() - started
        if index >= warm:
            samples["bare"].append(bare * 1e6)
            samples["meter"].append(metered_cpu * 1e6)
            samples["gateway"].append(gateway_cpu * 1e6)
    await gateway.forwarder.aclose()
    bare_median = Summary.of(samples["bare"]).median
    rows = [
        f"| {name} | {Summary.of(values).cell(0)} | {Summary.of(values).median - bare_median:.0f} |"
        for name, values in samples.items()
    ]
    return "\n".join(
        [
            f"In process, {requests} paid requests of {events} events each (µs of CPU):",
            "",
            "| called | CPU per request, µs | added to bare, µs |",
            "|---|---|---|",
            *rows,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--events", type=int, default=8000)
    parser.add_argument("--cpu-requests", type=int, default=200)
    parser.add_argument("--in-process-requests", type=int, default=1000)
    parser.add_argument(
        "--only-in-process", action="store_true", help="skip the loopback servers and the chain"
    )
    args = parser.parse_args()
    if not args.only_in_process:
        print(asyncio.run(run(args.rounds, args.events, args.cpu_requests)))
        print()
    print(asyncio.run(in_process(args.in_process_requests, 20)))


if __name__ == "__main__":
    main()
