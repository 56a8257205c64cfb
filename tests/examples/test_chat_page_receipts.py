"""Attack tests of the chat page's session: a server's receipt cannot make it sign for more.

The page signs each next voucher from the charge in the last streamed answer's receipt
(``channel.charged_cumulative``), which the server writes. ``Session.charged`` adopts it only
between what it knew and what it last signed for: ``tests/examples/chat_session.mjs`` runs
the page's ``session.mjs`` in node with receipts that claim more, go backwards, or name
another channel, and reports what it adopted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("chat_session.mjs")

NODE_READY = shutil.which("node") is not None and (ROOT / "node_modules" / "@x402").is_dir()

pytestmark = pytest.mark.skipif(
    not NODE_READY and not os.environ.get("CI"),  # in CI it runs, and fails without them
    reason="needs node and node_modules (npm ci)",
)


def test_a_receipt_is_adopted_only_up_to_what_the_page_signed_and_never_backwards() -> None:
    run = subprocess.run(
        ["node", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    cases = json.loads(run.stdout)["cases"]
    assert {name: (case["adopted"], case["charged"]) for name, case in cases.items()} == {
        "within the voucher": (True, "400"),
        "past the voucher": (False, "400"),  # more than the voucher it paid with
        "past it from the new charge": (False, "400"),  # a second receipt for the same voucher
        "backwards": (False, "400"),
        "another channel": (False, "400"),
        "no channel": (False, "400"),
        "up to the voucher": (True, "1000"),
        "the next answer": (True, "1900"),
    }
