"""Sample the metered server's hot path with py-spy while it streams paid answers.

    .venv/bin/python -m bench.profile [--events 8000] [--answers 30] [--max-tokens 16384]
                                      [--speedscope meter.json]

Starts the local stack and bench/sse_server.py behind X402Meter in uvicorn (as section 1
does), streams a few answers to warm it, then streams ``--answers`` paid answers while
``py-spy record --nonblocking`` samples the server, and prints where its event loop spent
the time: per function, inclusive and self, the idle waiting of other threads left out.
``--speedscope FILE`` also keeps the samples for https://www.speedscope.app. Needs py-spy
(in the dev extra) and ptrace (root in these containers).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import httpx

from bench.common import Payer
from bench.loopback import final_status, paid_headers, stream
from bench.servers import Server, sse_server
from bench.sse_server import PATH
from x402_meter.devstack import local_stack

_LINE = re.compile(r":\d+\)$")


def summarize(folded: Path, top: int) -> str:
    """Inclusive and self shares per function, over the stacks of the serving loop."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        if not any("run_asgi" in frame for frame in frames):
            continue  # idle threads, the loop waiting, start-up
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    if not total:
        return "no samples of the serving loop"
    lines = [f"{total} samples while serving; inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines.append("self:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


async def drive(server: Server, headers: list[str], events: int) -> None:
    """One paid answer per header, each settled before the next starts."""
    async with httpx.AsyncClient(timeout=60) as client:
        for header in headers:
            exchange = await stream(server, f"{PATH}?events={events}", header)
            await final_status(client, server, exchange.headers["x-payment-receipt"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=8000)
    parser.add_argument("--answers", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--rate", type=int, default=500, help="samples per second")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--speedscope", type=Path, help="also write the samples here")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    warm = 3
    with (
        local_stack() as stack,
        tempfile.TemporaryDirectory(prefix="x402-profile-") as scratch_name,
    ):
        scratch = Path(scratch_name)
        store = f"sqlite:///{scratch / 'ledger.sqlite3'}"
        with sse_server("meter", stack, scratch, store_url=store, max_tokens=args.max_tokens) as s:
            payer = Payer(stack.network, stack.asset, stack.payer_private_keys[0])
            headers = asyncio.run(paid_headers(s, payer, warm + args.answers))
            asyncio.run(drive(s, headers[:warm], args.events))
            folded = scratch / "samples.txt"
            record = [spy, "record", "--nonblocking", "-r", str(args.rate), "--pid", str(s.pid)]
            sampler = subprocess.Popen(
                [*record, "-f", "raw", "-o", str(folded)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            extra = None
            if args.speedscope is not None:
                extra = subprocess.Popen(
                    [*record, "-f", "speedscope", "-o", str(args.speedscope)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            try:
                asyncio.run(drive(s, headers[warm:], args.events))
            finally:
                for process in (sampler, extra):
                    if process is not None:
                        process.send_signal(signal.SIGINT)
                        process.wait(timeout=60)
            print(summarize(folded, args.top))


if __name__ == "__main__":
    main()
