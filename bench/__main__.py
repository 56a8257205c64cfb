"""Every benchmark, side by side in one run, written to docs/benchmarks.md.

    make bench                      # or: .venv/bin/python -m bench
    .venv/bin/python -m bench --quick --out /tmp/bench.md   # a smoke run, about a minute

Order: the in-process micro-benchmarks first (3, 4: each in a fresh process, no chain
running), then the local stack (anvil, contracts, facilitator) and three uvicorn servers for
1, 2 and 6, then 5 once every payment made so far has settled. ``--baseline-src DIR`` serves
and measures the ``x402_meter`` package found in DIR next to the installed one (sections 1,
3, 4 and 6): a change and what it changes, in the same run. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import uvicorn

from bench import loopback, sessions
from bench.common import Payer, Summary, machine, percentile
from bench.middleware_overhead import DORMANT_CAP, Overhead, Series
from bench.report import Report
from bench.servers import ROOT, Server, pin_client, sse_server
from bench.settlement import settle_all
from x402_meter.devstack import LocalStack, local_stack

DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"
CAP = 16384
"""max_tokens of the metered servers: an 8,000-token answer is well within it."""
TARGET_RATIO = 0.95
TARGET_CPU_US = 250.0
TARGET_SESSION_MS = 5.0
"""Issue 17's "a few milliseconds at most" for a voucher's first event."""


_LOOPBACK_SIZES: Final = frozenset(f.name for f in fields(loopback.LoopbackSizes))

NOTHING: Final = "X402Meter, a meter that counts nothing"
"""The section-1 variant that isolates the meter: X402Meter reading nothing."""


@dataclass(frozen=True)
class Sizes:
    throughput_events: int = 8000
    throughput_rounds: int = 40
    ttfb_events: int = 50
    ttfb_interval_ms: float = 10.0
    ttfb_rounds: int = 25
    cpu_requests: int = 2000
    cpu_events: int = 20
    cpu_runs: int = 2
    meter_megabytes: float = 4.0
    meter_rounds: int = 3
    settle_payments: int = 80
    settle_concurrency: int = 8
    streams: int = 200
    session_answers: int = 100
    session_events: int = 20

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            throughput_events=2000,
            throughput_rounds=4,
            ttfb_events=20,
            ttfb_rounds=3,
            cpu_requests=200,
            cpu_runs=1,
            meter_megabytes=0.5,
            meter_rounds=2,
            settle_payments=10,
            settle_concurrency=4,
            streams=40,
            session_answers=10,
        )


@dataclass
class Results:
    cpu: dict[str, Overhead] = field(default_factory=dict)
    meter: dict[str, dict[str, Any]] = field(default_factory=dict)
    throughput: loopback.Throughput | None = None
    first_byte: loopback.FirstByte | None = None
    memory: dict[str, loopback.Memory] = field(default_factory=dict)
    settlement: list[tuple[int, float, list[float]]] = field(default_factory=list)
    settled: dict[str, int] = field(default_factory=dict)
    sdk_payments: int = 0
    sessions: sessions.Columns = field(default_factory=dict)


# -- the in-process benchmarks, each in a fresh process -----------------------------------------


def _child_env(source: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(source)] if source is not None else []
    paths += [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _child_json(args: Sequence[str], source: Path | None) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=_child_env(source),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _trees(baseline: Path | None) -> list[tuple[str, Path | None]]:
    return [("current", None)] + ([("baseline", baseline)] if baseline is not None else [])


def run_cpu(sizes: Sizes, baseline: Path | None) -> dict[str, Overhead]:
    """Section 3, alternating the trees run by run; the samples of a tree's runs pooled."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in _trees(baseline)}
    for index in range(sizes.cpu_runs):
        trees = _trees(baseline)
        for name, source in trees if index % 2 == 0 else trees[::-1]:
            args = ["bench.middleware_overhead", "--json"]
            args += ["--requests", str(sizes.cpu_requests), "--events", str(sizes.cpu_events)]
            runs[name].append(_child_json(args, source))

    def pooled(name: str, part: str) -> Series:
        return Series.pooled(
            [Series(run[part]["events"], run[part]["samples"]) for run in runs[name]]
        )

    return {
        name: Overhead(pooled(name, "series"), pooled(name, "longer"), pooled(name, "capped"))
        for name in runs
    }


def run_meter(sizes: Sizes, baseline: Path | None) -> dict[str, dict[str, Any]]:
    """Section 4; with a baseline, two runs of each tree, alternating, the best of them kept."""
    results: dict[str, dict[str, Any]] = {}
    rounds = 2 if baseline is not None else 1
    for index in range(rounds):
        trees = _trees(baseline)
        for name, source in trees if index % 2 == 0 else trees[::-1]:
            args = ["bench.metering", "--json", "--megabytes", str(sizes.meter_megabytes)]
            args += ["--rounds", str(sizes.meter_rounds)]
            if name != "current":
                args.append("--no-tokenizer")  # the tokenizer is the same code in both
            rows = _child_json(args, source)
            best = results.setdefault(name, rows)
            for kind in ("streams", "bodies"):
                for kept, new in zip(best[kind], rows[kind], strict=True):
                    for key, value in new.items():
                        if isinstance(value, float) and key.endswith("per_second"):
                            kept[key] = max(kept[key] or 0.0, value)
    return results


# -- the loopback benchmarks: servers in their own processes, this process the client ---------


@dataclass
class Servers:
    bare: Server
    forward: Server
    meter: Server
    dormant: Server
    nothing: Server
    sdk: Server
    baseline: Server | None
    baseline_dormant: Server | None


@contextmanager
def servers(stack: LocalStack, scratch: Path, baseline: Path | None) -> Iterator[Servers]:
    with ExitStack() as stack_of:

        def start(mode: str, name: str, **options: Any) -> Server:
            if mode == "meter":
                options["store_url"] = f"sqlite:///{scratch / name}.sqlite3"
            return stack_of.enter_context(sse_server(mode, stack, scratch, name=name, **options))

        yield Servers(
            bare=start("bare", "bare"),
            forward=start("forward", "forward"),
            meter=start("meter", "meter", max_tokens=CAP),
            dormant=start("meter", "meter-dormant", max_tokens=DORMANT_CAP),
            nothing=start("meter", "meter-nothing", max_tokens=DORMANT_CAP, null_meter=True),
            sdk=start("sdk", "sdk", max_tokens=CAP),
            baseline=start("meter", "baseline", max_tokens=CAP, source=baseline)
            if baseline
            else None,
            baseline_dormant=start(
                "meter", "baseline-dormant", max_tokens=DORMANT_CAP, source=baseline
            )
            if baseline
            else None,
        )


async def run_loopback(
    stack: LocalStack, running: Servers, sizes: Sizes, sections: set[int], results: Results
) -> None:
    keys = stack.payer_private_keys
    payers = [Payer(stack.network, stack.asset, key) for key in keys]
    lb_sizes = loopback.LoopbackSizes(  # the sizes of this run that loopback has too
        **{f.name: getattr(sizes, f.name) for f in fields(sizes) if f.name in _LOOPBACK_SIZES}
    )
    receipts: list[loopback.Receipt] = []
    if 1 in sections:
        step("1. streaming throughput over loopback")
        variants = [
            loopback.Variant("bare", running.bare, paid=False),
            loopback.Variant("forwarding middleware", running.forward, paid=False),
            loopback.Variant("X402Meter", running.meter, paid=True),
            loopback.Variant("X402Meter, cap out of reach", running.dormant, paid=True),
            loopback.Variant(NOTHING, running.nothing, paid=True),
        ]
        if running.baseline is not None and running.baseline_dormant is not None:
            variants += [
                loopback.Variant("baseline X402Meter", running.baseline, paid=True),
                loopback.Variant(
                    "baseline X402Meter, cap out of reach", running.baseline_dormant, paid=True
                ),
            ]
        results.throughput = await loopback.throughput(variants, payers[0], lb_sizes)
        receipts += results.throughput.receipts
    if 2 in sections:
        step("2. time to first event")
        results.first_byte = await loopback.first_byte(
            running.bare,
            running.meter,
            running.sdk,
            payers[1],
            stack.facilitator_url,
            stack.facilitator_api_key,
            lb_sizes,
        )
        receipts += results.first_byte.receipts
        results.sdk_payments = results.first_byte.sdk_settled
    if 6 in sections:
        step(f"6. memory with {sizes.streams} streams held open")
        held = [("bare", running.bare, None), ("X402Meter", running.meter, payers[2])]
        if running.baseline is not None:
            held.append(("baseline X402Meter", running.baseline, payers[3]))
        for label, server, payer in held:
            results.memory[label] = await loopback.memory(server, payer, lb_sizes)
            receipts += results.memory[label].receipts
    if receipts:
        step(f"following {len(receipts)} receipts to settlement")
        results.settled = dict(await loopback.outcomes(receipts))
    if 5 in sections:
        step("5. settlement on the local chain")
        for concurrency in (1, sizes.settle_concurrency):
            elapsed, latencies = await settle_all(stack, sizes.settle_payments, concurrency)
            results.settlement.append((concurrency, elapsed, latencies))


# -- the page ------------------------------------------------------------------------------------


def _ms(summary: Summary) -> str:
    return summary.cell(1)


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def write_report(
    results: Results,
    sizes: Sizes,
    sections: set[int],
    command: str,
    started: datetime,
    machine_line: str,
) -> str:
    report = Report()
    report.heading("Benchmarks", 1)
    report.text(
        "Written by `make bench` (`.venv/bin/python -m bench`): do not edit by hand. "
        "Every figure below comes from one run, its parts side by side; the machines these "
        "run on are small and shared, so read ratios and medians, and min–max as the noise. "
        "`bench/README.md` says how each figure is taken."
    )
    loop = "uvloop" if _has("uvloop") else "asyncio"
    http = "httptools" if _has("httptools") else "h11"
    report.text(
        f"- command: `{command}`\n"
        f"- date: {started:%Y-%m-%d %H:%M} UTC, {time.time() - started.timestamp():.0f} s; "
        f"load average at the end {', '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
        f"- machine: {machine_line}\n"
        f"- server: uvicorn {uvicorn.__version__} ({http}, {loop} loop), one worker, "
        "access log off; X402Meter with a SQLite ledger, the local facilitator "
        "(`local_stack()`: anvil, the contracts, `x402-meter facilitator`)\n"
        f"- sizes: {', '.join(f'{f.name}={getattr(sizes, f.name)}' for f in fields(sizes))}"
    )
    summary_rows = []
    throughput = results.throughput
    if throughput is not None:
        ratio = throughput.ratios["X402Meter"]
        dormant = throughput.ratios["X402Meter, cap out of reach"]
        floor = throughput.ratios["forwarding middleware"]
        summary_rows.append(
            [
                "1. streaming throughput, X402Meter / bare (median of per-round ratios)",
                f">= {TARGET_RATIO}",
                f"{ratio.median:.3f} with the cap checked, {dormant.median:.3f} with it out of "
                f"reach (a middleware that only forwards: {floor.median:.3f})",
                _verdict(min(ratio.median, dormant.median) >= TARGET_RATIO),
            ]
        )
    first = results.first_byte
    if first is not None:
        summary_rows.append(
            [
                "2. first event: added by X402Meter vs one /verify round trip (medians)",
                "added <= verify",
                f"{first.added.median:.1f} ms vs {first.verify.median:.1f} ms (per round, "
                f"{first.beyond_verify.median:+.1f} ms beyond it); the SDK's middleware: "
                f"{first.first_event['SDK'].median:.0f} ms",
                _verdict(first.added.median <= first.verify.median),
            ]
        )
    current_cpu = results.cpu.get("current")
    if current_cpu is not None:
        summary_rows.append(
            [
                "3. CPU added per paid request (median)",
                f"<= {TARGET_CPU_US:.0f} µs",
                f"{current_cpu.series.added_cpu:.0f} µs",
                _verdict(current_cpu.series.added_cpu <= TARGET_CPU_US),
            ]
        )
    if "X402Meter" in results.memory:
        per_stream = results.memory["X402Meter"].per_stream_kib
        summary_rows.append(
            ["6. memory per in-flight paid stream", "–", f"{per_stream:.1f} KiB", ""]
        )
    if results.sessions:
        upto = results.sessions["upto"]
        session = results.sessions["session"]
        ours = results.sessions["session-meter"]
        added = sessions.median(session.added) * 1000
        summary_rows.append(
            [
                "7. first event added by a session voucher (median), facilitator calls per "
                "answer; `upto` beside it",
                f"<= {TARGET_SESSION_MS:.0f} ms, no facilitator call",
                f"{added:.1f} ms, {session.facilitator_calls() / sizes.session_answers:.2f} "
                f"calls; `upto`: {sessions.median(upto.added) * 1000:.1f} ms, "
                f"{upto.facilitator_calls() / sizes.session_answers:.2f} calls; as the payer "
                f"has it: {sessions.median(ours.payer_added) * 1000:.1f} ms with x402-meter's "
                f"client, {sessions.median(session.payer_added) * 1000:.1f} ms with the SDK's",
                _verdict(added <= TARGET_SESSION_MS),
            ]
        )
    if summary_rows:
        report.heading("Summary")
        report.table(["figure", "target", "result", ""], summary_rows)
    if throughput is not None:
        _throughput(report, throughput, sizes)
    if first is not None:
        _first_byte(report, first, results.sdk_payments)
    if results.cpu:
        _cpu(report, results.cpu, sizes)
    if results.meter:
        _meter(report, results.meter, sizes)
    if results.settlement:
        _settlement(report, results.settlement, sizes)
    if results.memory:
        _memory(report, results.memory)
    if results.sessions:
        _sessions(report, results.sessions, sizes)
    if results.settled:
        outcomes = ", ".join(
            f"{count} {status}" for status, count in sorted(results.settled.items())
        )
        report.text(
            f"Every paid request of sections 1, 2 and 6 was followed to its receipt's end: "
            f"{outcomes}."
        )
    return report.render()


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _throughput(report: Report, result: loopback.Throughput, sizes: Sizes) -> None:
    report.heading("1. Streaming throughput over loopback")
    report.text(
        f"One answer of {result.events:,} OpenAI chat-completion chunks ({result.megabytes:.2f} "
        f"MB on the wire) streamed as fast as uvicorn takes it, to a client in the benchmark's "
        f"process; {sizes.throughput_rounds} rounds, each variant once per round in a rotating "
        "order (2 warm-up rounds dropped). MB/s from the first event to the last byte (the "
        "payment's round trips come before the first event: section 2); the ratio is taken "
        "per round. Server CPU: the uvicorn process's main thread, per answer."
    )
    report.text(
        f"`X402Meter` has `max_tokens={CAP}`: past {CAP:,} bytes the cap is checked as the "
        "stream grows, and as OpenAI streams report usage only at the end, each check counts "
        "the text so far (only the text since the last check is read and tokenized). `cap "
        "out of reach`: `max_tokens` so high that the byte bound rules the cap out and no "
        "running count is taken: the stream is held unread and, once its usage report has "
        'come, only the report is read (what `on_cap="finish"` costs, whatever the '
        "maximum). `meter that counts nothing`: X402Meter with a meter "
        "whose `feed` does nothing: the payment, the ledger and the batching around the "
        "meter, without the reading."
    )
    rows = []
    for label, rate in result.rates.items():
        cpu = result.cpu_ms[label]
        rows.append(
            [
                label,
                rate.cell(1),
                result.ratios[label].cell(3),
                cpu.cell(1),
                f"{cpu.median / result.cpu_ms['bare'].median:.2f}",
            ]
        )
    report.table(
        [
            "variant",
            "MB/s",
            "ratio to bare (per round)",
            "server CPU per answer, ms",
            "CPU ratio",
        ],
        rows,
    )
    per_event = result.cpu_ms["bare"].median * 1000 / result.events

    def beyond_nothing(label: str) -> float:
        """µs of server CPU per event over the meter that counts nothing, fastest answers:
        the noise here only ever adds, and the medians are too far apart for a difference."""
        return (result.cpu_ms[label].low - result.cpu_ms[NOTHING].low) * 1000 / result.events

    report.text(
        f"The bare server spends {per_event:.1f} µs of CPU per event (uvicorn, h11, the "
        "socket); at 0.95 a middleware has half a microsecond per event to spend, about what "
        "passing each message through one more coroutine costs (the forwarding middleware). "
        f"Counting the stream as it goes, for the cap, costs {beyond_nothing('X402Meter'):.2f} "
        "µs per event here (the fastest answer's CPU over the fastest of the meter that "
        "counts nothing); holding it and reading the report, "
        f"{beyond_nothing('X402Meter, cap out of reach'):.2f} µs. "
        "X402Meter's CPU per answer also holds the payment's fixed work (two facilitator "
        "round trips through httpx, the SQLite rows), outside the timed stream, which a "
        "longer answer spreads thinner. Section 3 has the cost per event without a server "
        "around it."
    )


def _first_byte(report: Report, result: loopback.FirstByte, sdk_payments: int) -> None:
    report.heading("2. Time to first event")
    report.text(
        f"The same endpoint streaming like a model: {result.events} chunks "
        f"{result.interval_ms:g} ms apart. Milliseconds from connecting to the first "
        "`data:` of the body, and to the last byte, each variant once per round in a rotating "
        "order, with one `/verify` of a fresh payment sent straight to the facilitator (the "
        "client X402Meter uses) in the same rounds. The x402 SDK's `PaymentMiddlewareASGI` "
        "(same maximum, pay_to, asset, network, facilitator) buffers the body and settles "
        "before it answers: its first byte comes with the last."
    )
    rows = [
        [name, _ms(result.first_event[name]), _ms(result.last_byte[name])]
        for name in result.first_event
    ]
    rows.append(["facilitator `/verify` round trip", _ms(result.verify), ""])
    rows.append(["X402Meter's first event − bare's, per round", _ms(result.added), ""])
    rows.append(["the same − that round's verify round trip", _ms(result.beyond_verify), ""])
    report.table(["", "first event, ms", "last byte, ms"], rows)
    report.text(
        f"X402Meter adds {result.added.median:.1f} ms before the first event; "
        f"the verify round trip alone takes {result.verify.median:.1f} ms. Beyond it, before "
        "the first byte, X402Meter reserves the authorization and writes the verified row to "
        "its ledger (SQLite, on a worker thread): a payment that was verified is on record "
        "before anything is served. The SDK's middleware answers "
        f"{result.first_event['SDK'].median - result.first_event['bare'].median:.0f} ms after "
        "the bare app starts to: the whole body, then a settlement on chain "
        f"({sdk_payments} of its answers carried one)."
    )


def _cpu(report: Report, results: dict[str, Overhead], sizes: Sizes) -> None:
    report.heading("3. CPU per paid request, the facilitator left out")
    report.text(
        "In-process (no server, no network), bare and paid requests alternating: "
        "`time.thread_time` per request; X402Meter with a MemoryStore and an in-process "
        "facilitator stand-in that accepts at once (this figure only), the settlement job "
        "drained inside the timed region. µs: median (min–max)."
    )
    rows = []
    for name, result in results.items():
        prefix = "" if name == "current" else f"{name}: "
        for label, series in (
            (f"{series_label(result.series)}", result.series),
            (f"{series_label(result.longer)}, cap out of reach", result.longer),
            (f"{series_label(result.capped)}, cap checked", result.capped),
        ):
            rows.append(
                [
                    prefix + label,
                    series.summary("bare_cpu").cell(),
                    series.summary("paid_cpu").cell(),
                    f"{series.added_cpu:.1f}",
                    f"{series.added_wall:.1f}",
                ]
            )
    report.table(["answer", "bare, µs CPU", "X402Meter, µs CPU", "added CPU", "added wall"], rows)
    for name, result in results.items():
        report.text(
            f"{'' if name == 'current' else name + ': '}per request "
            f"{result.series.added_cpu:.0f} µs; per more event "
            f"{result.per_event(result.longer):.2f} µs, "
            f"{result.per_event(result.capped):.2f} µs with the cap checked "
            f"({len(result.series.samples['paid_cpu']):,} paid requests of "
            f"{result.series.events} events)."
        )


def series_label(series: Series) -> str:
    return f"{series.events} events"


def _meter(report: Report, results: dict[str, dict[str, Any]], sizes: Sizes) -> None:
    report.heading("4. Meters and the fallback tokenizer, one core")
    report.text(
        f"bench/metering.py: each streaming fixture of tests/fixtures stretched to "
        f"~{sizes.meter_megabytes:g} MB and fed to `auto_meter` one event per chunk (an app "
        "yielding events) and in 16 KiB chunks (a proxy relaying reads; the batches X402Meter "
        f"feeds); best of {sizes.meter_rounds}."
    )
    current = results["current"]
    baseline = results.get("baseline")
    headers = ["format", "events", "MB", "events/s", "MB/s", "MB/s, 16 KiB", "usage"]
    if baseline:
        headers += ["baseline MB/s", "baseline MB/s, 16 KiB"]
    rows = []
    for index, row in enumerate(current["streams"]):
        cells = [
            row["name"],
            f"{row['events']:,}",
            f"{row['megabytes']:.1f}",
            _num(row["events_per_second"], 0),
            _num(row["megabytes_per_second"], 1),
            _num(row["relayed_megabytes_per_second"], 1),
            row["usage"],
        ]
        if baseline:
            old = baseline["streams"][index]
            cells += [
                _num(old["megabytes_per_second"], 1),
                _num(old["relayed_megabytes_per_second"], 1),
            ]
        rows.append(cells)
    report.table(headers, rows)
    rows = []
    for index, row in enumerate(current["bodies"]):
        cells = [
            row["name"],
            f"{row['size']:,}",
            _num(row["bodies_per_second"], 0),
            _num(row["megabytes_per_second"], 1),
        ]
        if baseline:
            cells.append(_num(baseline["bodies"][index]["bodies_per_second"], 0))
        rows.append(cells)
    report.table(
        ["whole JSON body", "bytes", "bodies/s", "MB/s"]
        + (["baseline bodies/s"] if baseline else []),
        rows,
    )
    if current["tokenizer"]:
        rows = [
            [
                row["encoding"],
                row["backend"],
                _num(row["cold_seconds"], 2),
                f"{row['load_seconds']:.2f}",
                f"{row['megabytes']:.2f}",
                _num(row["tokens_per_second"], 0),
                _num(row["megabytes_per_second"], 2),
            ]
            for row in current["tokenizer"]
        ]
        report.text(
            "The fallback tokenizer on varied text (cold: the first count in a new process; "
            "load: reading, checking and building the vocabulary):"
        )
        report.table(["encoding", "backend", "cold, s", "load, s", "MB", "tokens/s", "MB/s"], rows)


def _num(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _settlement(report: Report, runs: list[tuple[int, float, list[float]]], sizes: Sizes) -> None:
    report.heading("5. Settlement on the local chain")
    report.text(
        f"bench/settlement.py: {sizes.settle_payments} `upto` payments signed by the SDK "
        "client, settled below their maximum through the local facilitator's `/settle` (a "
        "real transaction on anvil, waited for), one at a time and concurrently. Only "
        "`/settle` is timed."
    )
    rows = []
    for concurrency, elapsed, latencies in runs:
        ms = [x * 1000 for x in latencies]
        rows.append(
            [
                concurrency,
                f"{len(ms) / elapsed:.1f}",
                f"{Summary.of(ms).median:.1f}",
                f"{percentile(ms, 0.9):.1f}",
                f"{percentile(ms, 0.99):.1f}",
                f"{min(ms):.1f}–{max(ms):.1f}",
            ]
        )
    report.table(
        ["concurrency", "settlements/s", "median, ms", "p90, ms", "p99, ms", "min–max, ms"], rows
    )


def _memory(report: Report, results: dict[str, loopback.Memory]) -> None:
    streams = next(iter(results.values())).streams
    report.heading("6. Memory per in-flight stream")
    report.text(
        f"{streams} streams opened at once and held after their first events (the app waits "
        "on an event until `POST /release`); the server's RSS idle after a warm-up that held "
        "as many at once (so that what a server grows once is not counted per stream), and "
        "while all are open. Paid: each verified by the facilitator and recorded in the "
        "ledger before its first byte."
    )
    rows = [
        [
            label,
            f"{memory.idle_rss / 2**20:.1f}",
            f"{memory.busy_rss / 2**20:.1f}",
            f"{memory.after_rss / 2**20:.1f}",
            f"{memory.per_stream_kib:.1f}",
        ]
        for label, memory in results.items()
    ]
    report.table(
        ["server", "RSS idle, MiB", f"RSS with {streams} open, MiB", "RSS after", "KiB per stream"],
        rows,
    )


def _sessions(report: Report, columns: sessions.Columns, sizes: Sizes) -> None:
    bare = sessions.median([a.first_event for a in columns["session"].bare]) * 1000
    report.heading("7. Sessions beside `upto`, per paid answer")
    report.text(
        f"bench/sessions.py: {sizes.session_answers} streamed answers of "
        f"{sizes.session_events} events each way, rounds in a rotating order; each way its "
        "own X402Meter (SQLite ledger and channel store) offering both schemes; the bare app "
        f"in the same rounds (its first event: {bare:.1f} ms, median). Paid by the official "
        "Python SDK's client as its httpx transport does (the unpaid 402, then the payment; "
        "after a streamed answer, the corrective 402 before the next voucher) and by "
        "x402-meter's `PayingAsyncClient` (it reads each streamed answer's receipt instead). "
        "'Added over bare' is the paid request's own; 'as the payer has it' runs from its "
        "first request for the answer. Facilitator calls are counted at a pass-through in "
        "front of the facilitator, one per way (the request path, the settlement and claims "
        "workers); gas from the transactions' receipts on anvil. Each claims worker runs one "
        "pass at the end: one claim and one sweep for the whole run."
    )
    report.text(sessions.tables(columns, sizes.session_answers))


# -- running it ------------------------------------------------------------------------------------


def step(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the page goes")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--sections", default="1,2,3,4,5,6,7", help="which sections to run (default: all)"
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="a directory holding another x402_meter package, measured side by side",
    )
    for size in fields(Sizes):
        parser.add_argument(
            f"--{size.name.replace('_', '-')}",
            type=type(size.default),
            help=f"default {size.default}",
        )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    started = datetime.now(UTC)
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.baseline_src is not None:
        sizes = replace(sizes, cpu_runs=max(sizes.cpu_runs, 3))
        args.baseline_src = args.baseline_src.resolve()
    overrides = {
        f.name: getattr(args, f.name) for f in fields(Sizes) if getattr(args, f.name) is not None
    }
    sizes = replace(sizes, **overrides)
    sections = {int(part) for part in args.sections.split(",") if part.strip()}
    results = Results()
    machine_line = machine()
    step(f"machine: {machine_line}")
    if 3 in sections:
        step("3. CPU per paid request (in-process)")
        results.cpu = run_cpu(sizes, args.baseline_src)
    if 4 in sections:
        step("4. meters and tokenizer (in-process)")
        results.meter = run_meter(sizes, args.baseline_src)
    if sections & {1, 2, 5, 6, 7}:
        step("starting the local stack and the servers")
        with (
            local_stack() as stack,
            tempfile.TemporaryDirectory(prefix="x402-bench-") as scratch,
            servers(stack, Path(scratch), args.baseline_src) as running,
        ):
            pin_client()  # the servers have a core of their own (bench/servers.py)
            asyncio.run(run_loopback(stack, running, sizes, sections, results))
            if 7 in sections:
                step(f"7. sessions beside upto, {sizes.session_answers} answers each")
                results.sessions = sessions.measure_on(
                    stack, sizes.session_answers, sizes.session_events
                )
    page = write_report(results, sizes, sections, command, started, machine_line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page, encoding="utf-8")
    step(f"wrote {args.out} in {time.time() - started.timestamp():.0f} s")


if __name__ == "__main__":
    main()
