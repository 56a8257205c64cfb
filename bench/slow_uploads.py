"""What unpaid slow uploads cost a metered server's memory: the bound, and that it returns.

    .venv/bin/python -m bench.slow_uploads                       # 200 uploads of 1 MiB
    .venv/bin/python -m bench.slow_uploads --uploads 200 --timeout 10
    .venv/bin/python -m bench.slow_uploads --baseline-src /tmp/before/src   # an older tree

On the local stack, bench/sse_server.py's metered mode runs in its own uvicorn process.
``--uploads`` connections each declare a 1 MiB body, send all of it but its last byte at
once, and hold. The server's resident memory is read before, at its peak while the uploads
hold (sampled every 50 ms), and a few seconds after every connection has its answer (or,
for a server that never answers, after the harness gives up and closes them); then again on
the same server (``--rounds``): memory a round leaves behind is reused by the next, not
added to. The answers are counted by
status: 408 ``request_timeout`` (the body's time limit), 503 ``server_busy`` (past the shared
budget of bodies being read).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Final

import anyio

from bench.common import machine
from bench.servers import Server, rss_bytes, sse_server
from x402_meter.devstack import local_stack

BODY: Final = 1024 * 1024
MIB: Final = 1024 * 1024
SETTLE_SECONDS: Final = 3.0


async def hold_one(server: Server, give_up: float) -> str:
    """One upload of all but the last byte; the status of its answer ("none": no answer)."""
    async with await anyio.connect_tcp(server.host, server.port) as stream:
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
            f"Content-Type: application/json\r\nContent-Length: {BODY}\r\n\r\n"
        ).encode()
        try:
            await stream.send(head + b" " * (BODY - 1))
            with anyio.fail_after(give_up):
                answer = await stream.receive()
        except (TimeoutError, OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            return "none"
    return answer.split(b" ", 2)[1].decode()


async def run(server: Server, uploads: int, give_up: float, rounds: int) -> None:
    for round_number in range(1, rounds + 1):
        print(f"round {round_number}: ", end="")
        await one_round(server, uploads, give_up)


async def one_round(server: Server, uploads: int, give_up: float) -> None:
    before = rss_bytes(server.pid)
    peak = before
    statuses: Counter[str] = Counter()
    done = anyio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(server.pid))
            with anyio.move_on_after(0.05):
                await done.wait()

    async def one() -> None:
        statuses[await hold_one(server, give_up)] += 1

    async with anyio.create_task_group() as sampler:
        sampler.start_soon(sample)
        async with anyio.create_task_group() as clients:
            for _ in range(uploads):
                clients.start_soon(one)
        done.set()
    await anyio.sleep(SETTLE_SECONDS)  # the server sees the connections close
    after = rss_bytes(server.pid)
    print(
        f"{uploads} slow uploads of 1 MiB: RSS {before / MIB:.0f} MiB before, "
        f"peak {peak / MIB:.0f} MiB (+{(peak - before) / MIB:.0f}), "
        f"{after / MIB:.0f} MiB after (+{(after - before) / MIB:.0f}); "
        f"answers {dict(sorted(statuses.items()))}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=30.0, help="request_body_timeout, s")
    parser.add_argument("--give-up", type=float, default=60.0, help="harness' wait, s")
    parser.add_argument("--rounds", type=int, default=2, help="on the same server")
    parser.add_argument("--baseline-src", type=Path, help="serve another x402_meter tree")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    os.environ["X402_BENCH_METER_OPTIONS"] = f'{{"request_body_timeout": {args.timeout}}}'
    with (
        local_stack() as stack,
        tempfile.TemporaryDirectory() as tmp,
        sse_server(
            "meter",
            stack,
            Path(tmp),
            store_url=f"sqlite:///{tmp}/ledger.sqlite3",
            source=args.baseline_src,
        ) as server,
    ):
        anyio.run(run, server, args.uploads, args.give_up, args.rounds)


if __name__ == "__main__":
    main()
