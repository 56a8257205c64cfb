"""Ledger rows for store and settlement tests, and the ledger CLI run as a user runs it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from typing import Any

from x402_meter.store import LedgerState, PaymentRecord

REQUIREMENTS: dict[str, Any] = {
    "scheme": "upto",
    "network": "eip155:31337",
    "asset": "0x" + "11" * 20,
    "amount": "8192",
    "payTo": "0x" + "33" * 20,
    "maxTimeoutSeconds": 300,
    "extra": {},
}
PAYLOAD: dict[str, Any] = {"x402Version": 2, "accepted": REQUIREMENTS, "payload": {}}


def payment_row(receipt_id: str = "r1", **changes: Any) -> PaymentRecord:
    """A verified upto payment of at most 8192 units, with ``changes`` applied."""
    row = PaymentRecord(
        receipt_id=receipt_id,
        key=f"upto:eip155:31337:0xpayer:{receipt_id}",
        state=LedgerState.VERIFIED,
        scheme="upto",
        network="eip155:31337",
        asset=REQUIREMENTS["asset"],
        payer="0x" + "22" * 20,
        pay_to=REQUIREMENTS["payTo"],
        max_amount=8192,
        x402_version=2,
        payload_json=json.dumps(PAYLOAD),
        requirements_json=json.dumps(REQUIREMENTS),
        created_at=1_700_000_000.0,
        updated_at=1_700_000_000.0,
    )
    return dataclasses.replace(row, **changes)


def ledger(store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``x402-meter ledger --store STORE_URL ARGS...`` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "x402_meter", "ledger", "--store", store_url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
