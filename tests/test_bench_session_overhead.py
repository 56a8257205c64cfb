"""``python -m bench.session_overhead`` runs, and a voucher on a channel this process serves
goes to the store's worker thread only where it must: never with the memory stores; on
SQLite three times before its first byte (the voided-payer read, taking the channel, the
ledger row) and seven in all. Counts, never times (speed is for ``bench/``); the benchmark
is run as a user runs it (no test imports ``bench``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def hops(output: str, store: str) -> tuple[float, float]:
    """Thread hops per voucher request under ``store``: in all, and before the first byte."""
    block = output.split(f"{store}: ", 1)[1]
    total = re.search(r"thread hops per voucher request: ([\d.]+)", block)
    early = re.search(r"before its first byte: ([\d.]+)", block)
    assert total is not None, output
    assert early is not None, output
    return float(total.group(1)), float(early.group(1))


def test_a_voucher_request_hops_to_a_thread_only_for_the_sqlite_store() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    run = subprocess.run(
        [sys.executable, "-m", "bench.session_overhead", "--requests", "20", "--events", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert hops(run.stdout, "memory") == (0.0, 0.0)
    assert hops(run.stdout, "sqlite") == (7.0, 3.0)
