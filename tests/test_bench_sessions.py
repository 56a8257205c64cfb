"""``python -m bench.sessions`` runs: two answers each way on a local stack of its own.

The benchmark is run as a user runs it (no test imports ``bench``), and only what it counts
is checked, never a time (speed is for ``bench/``). The counts are the protocol's: ``upto``
verifies and settles every answer; a session deposits once, pays the rest by voucher, and
its claims worker claims them in one transaction and sweeps once; the SDK's session client
is corrected once after a streamed answer, x402-meter's never.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def table_row(output: str, label: str) -> list[str]:
    """The cells after ``label`` in the benchmark's markdown table."""
    (line,) = [line for line in output.splitlines() if line.startswith(f"| {label} |")]
    return [cell.strip() for cell in line.strip("|").split("|")[1:]]


def test_the_session_benchmark_counts_one_deposit_one_claim_one_sweep_beside_upto() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    run = subprocess.run(
        [sys.executable, "-m", "bench.sessions", "--answers", "2", "--events", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    output = run.stdout
    session = "claim 1, deposit 1, sweep 1"
    assert table_row(output, "transactions by kind") == ["settlement 2", session, session]
    assert table_row(output, "receipts") == ["settled 2"] * 3
    assert table_row(output, "facilitator `/verify` calls")[0] == "1.00"  # upto: each answer
    # the SDK client's second voucher was corrected once (the first answer deposited);
    # x402-meter's client read the first answer's receipt instead
    assert table_row(output, "… of which corrective 402s") == ["0.00", "0.50", "0.00"]
