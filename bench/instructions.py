"""Instructions per paid request, counted by callgrind: section 3 without the noise.

    .venv/bin/python -m bench.instructions [--requests 100] [--events 20] [--case paid]
        [--baseline-src DIR] [--annotate DIR]

On a shared machine the CPU time of one request swings by several percent from run to run;
the number of instructions it executes does not. This runs the requests of section 3
(``bench.middleware_overhead``: the same SSE app, in-process, a fresh SDK-signed ``upto``
payment each, a MemoryStore, the in-process facilitator stand-in, the settlement drained)
under ``valgrind --tool=callgrind`` with instrumentation off until the payments are signed
and 30 requests have warmed up, then counts the instructions of ``--requests`` of them; a
second run counts twice as many, and the difference (divided by ``--requests``) is the cost
of one request, with whatever the first and last request cost once left out. The settlement
sweeper is kept out of the count: it wakes by the wall clock, which callgrind stretches, so
how often it ran would vary from run to run. Two runs agree within a few hundred
instructions of some 1.7 million.

It counts the bare app and X402Meter with 20-event answers and with 200-event ones (cap out
of reach; cap checked), and a request paid by session voucher (``bench.session_overhead``;
the ledger and channels in memory or SQLite), and prints instructions per request and what
X402Meter adds per request, per event and per voucher request; ``--case`` counts only
some. ``--baseline-src DIR`` counts the ``x402_meter`` found in ``DIR`` (a copy of
``src/`` from before a change) the same way, beside it. ``--annotate DIR`` keeps the
callgrind files there, for ``callgrind_annotate`` (they name the interpreter's C
functions, not Python ones).

Needs valgrind (``apt-get install valgrind``). Every case is two runs under callgrind, which
runs Python some 50 times slower: about 12 minutes for all cases of one tree at
``--requests 200``, 2 minutes for ``--case paid --requests 100``. Instructions are not time
(a cache miss costs more than an add), but a change that executes fewer of them on the same
path is nearly always faster.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.middleware_overhead import DORMANT_CAP, call, metered, signed_headers, sse_app
from bench.session_overhead import VoucherPayer, session_meter

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 30
"""Requests run before counting starts (imports, caches, the first settlement)."""
_TOTALS = re.compile(rb"^totals:\s+(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Case:
    """One series of requests: ``events`` per answer, under ``max_tokens``, paid or bare.

    ``bare``, ``paid``: the answer of section 3; ``-10x``: ten times the events, with the cap
    out of reach (``dormant``: no running count) or checked as the stream grows."""

    label: str
    events: int
    max_tokens: int
    paid: bool
    session: str | None = None
    """Paid by voucher on a known channel, the ledger and channels in ``memory`` or
    ``sqlite`` (None: paid by ``upto``)."""


def cases(events: int) -> list[Case]:
    return [
        Case("bare", events, 16384, paid=False),
        Case("paid", events, 16384, paid=True),
        Case("bare-10x", events * 10, 16384, paid=False),
        Case("paid-10x-dormant", events * 10, DORMANT_CAP, paid=True),
        Case("paid-10x-capped", events * 10, 16384, paid=True),
        Case("session-memory", events, 16384, paid=True, session="memory"),
        Case("session-sqlite", events, 16384, paid=True, session="sqlite"),
    ]


# -- the child: runs under callgrind --------------------------------------------------------


def _instrument(on: bool) -> None:
    """Have callgrind start (or stop) counting this process's instructions.

    ``callgrind_control`` is spawned without ``subprocess``, so that what runs here after it
    returns (and is counted) is a few lines."""
    control = shutil.which("callgrind_control")
    assert control is not None, "callgrind_control is missing: apt-get install valgrind"
    devnull = os.open(os.devnull, os.O_WRONLY)
    argv = [control, "-i", "on" if on else "off", str(os.getpid())]
    pid = os.posix_spawn(
        control, argv, os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)]
    )
    os.waitpid(pid, 0)
    os.close(devnull)


async def _run(
    requests: int, events: int, max_tokens: int, paid: bool, session: str | None
) -> None:
    bare_app = sse_app(events)
    scratch = tempfile.mkdtemp()
    if session is None:
        app = metered(bare_app, max_tokens)
    else:
        store = "memory" if session == "memory" else str(Path(scratch) / "meter.sqlite3")
        app = session_meter(bare_app, store, max_tokens)
    # The sweeper wakes every few seconds of wall-clock time, which callgrind stretches: how
    # often it ran among the requests counted would vary from run to run.
    settler = app.runtime.settler
    settler.retry = dataclasses.replace(settler.retry, sweep_every=24 * 3600.0)
    if session is None:
        headers = await signed_headers(app, requests + WARM_UP)
    else:  # vouchers on one channel, its record fresh: admitted with no facilitator call
        payer = await VoucherPayer.opened(app)
        headers = await payer.headers(app, app, requests + WARM_UP)
    target = app if paid else bare_app

    async def one(header: bytes) -> None:
        await call(target, header if paid else None)
        if paid:
            await app.runtime.settler.drain()

    for header in headers[:WARM_UP]:
        await one(header)
    gc.collect()
    gc.freeze()  # what start-up left is not walked again by the collections counted
    _instrument(on=True)
    for header in headers[WARM_UP:]:
        await one(header)
    _instrument(on=False)
    shutil.rmtree(scratch, ignore_errors=True)


def child(args: argparse.Namespace) -> None:
    asyncio.run(_run(args.requests, args.events, args.max_tokens, args.paid, args.session))
    sys.stdout.flush()
    os._exit(0)  # the interpreter's shutdown is not worth simulating


# -- the parent -----------------------------------------------------------------------------


def count(case: Case, requests: int, source: Path | None, out: Path) -> int:
    """Instructions of ``requests`` requests of ``case``, counted under callgrind."""
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = "0"
    paths = ([str(source)] if source is not None else []) + [str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(
        paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    argv += [sys.executable, "-m", "bench.instructions", "--child"]
    argv += ["--requests", str(requests), "--events", str(case.events)]
    argv += ["--max-tokens", str(case.max_tokens)] + (["--paid"] if case.paid else [])
    argv += ["--session", case.session] if case.session else []
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr.decode()[-3000:]}")
    found = _TOTALS.search(out.read_bytes())
    assert found is not None, f"no totals in {out}"
    return int(found.group(1))


def per_request(case: Case, requests: int, source: Path | None, scratch: Path) -> float:
    """Instructions of one request: the count of ``2 * requests`` minus that of ``requests``."""
    once = count(case, requests, source, scratch / f"{case.label}.{requests}.out")
    twice = count(case, 2 * requests, source, scratch / f"{case.label}.{2 * requests}.out")
    return (twice - once) / requests


def added(figures: dict[str, float], events: int) -> dict[str, float]:
    """What X402Meter adds, from the cases counted: per paid request and per event."""
    has = figures.keys()
    rows = {}
    if {"paid", "bare"} <= has:
        rows["added per paid request"] = figures["paid"] - figures["bare"]
    for store in ("memory", "sqlite"):
        if {f"session-{store}", "bare"} <= has:
            session = figures[f"session-{store}"]
            rows[f"added per voucher request, {store}"] = session - figures["bare"]
    for longer, label in [
        ("paid-10x-dormant", "cap out of reach"),
        ("paid-10x-capped", "cap checked"),
    ]:
        if {longer, "bare-10x", "paid", "bare"} <= has:
            more = figures[longer] - figures["bare-10x"] - figures["paid"] + figures["bare"]
            rows[f"added per event, {label}"] = more / (9 * events)
    return rows


def report(trees: list[str], figures: dict[str, dict[str, float]], events: int) -> None:
    width = max(len(case.label) for case in cases(events)) + 20
    print(f"instructions per request ({events} and {10 * events} events per answer)")
    print(f"{'':{width}}  " + "  ".join(f"{tree:>12}" for tree in trees))
    rows = {tree: {**figures[tree], **added(figures[tree], events)} for tree in trees}
    for label in rows[trees[0]]:
        print(f"{label:{width}}  " + "  ".join(f"{rows[t][label]:12,.0f}" for t in trees))
    first = rows[trees[0]].get("added per paid request")
    if len(trees) == 2 and first is not None:
        change = 100 * (first / rows[trees[1]]["added per paid request"] - 1)
        print(f"\nadded per paid request, {trees[0]} vs {trees[1]}: {change:+.1f} %")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="requests per count")
    parser.add_argument("--events", type=int, default=20, help="events per answer")
    parser.add_argument("--baseline-src", type=Path, help="an older src/ to count beside")
    parser.add_argument(
        "--case",
        action="append",
        choices=[case.label for case in cases(1)],
        help="count only this case (repeatable; default: all)",
    )
    parser.add_argument("--annotate", type=Path, help="keep the callgrind files here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paid", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-tokens", type=int, default=16384, help=argparse.SUPPRESS)
    parser.add_argument("--session", choices=["memory", "sqlite"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    trees: dict[str, Path | None] = {"current": None}
    if args.baseline_src is not None:
        trees["baseline"] = args.baseline_src.resolve()
    figures: dict[str, dict[str, float]] = {tree: {} for tree in trees}
    with tempfile.TemporaryDirectory() as scratch:
        for tree, source in trees.items():
            out = args.annotate / tree if args.annotate else Path(scratch) / tree
            out.mkdir(parents=True, exist_ok=True)
            for case in cases(args.events):
                if args.case and case.label not in args.case:
                    continue
                figures[tree][case.label] = per_request(case, args.requests, source, out)
                print(f"{tree}: {case.label}: {figures[tree][case.label]:,.0f}", file=sys.stderr)
    report(list(trees), figures, args.events)


if __name__ == "__main__":
    main()
