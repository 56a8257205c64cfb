"""``x402-meter ledger`` takes ``--store`` where people type it: before or after the action."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tests.ledger_rows import payment_row
from x402_meter.store import SQLiteStore


def x402_meter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "x402_meter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A SQLite ledger holding one verified payment, ``r1``."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"

    async def seed() -> None:
        store = SQLiteStore(tmp_path / "ledger.sqlite3")
        try:
            await store.save(payment_row("r1"))
        finally:
            await store.aclose()

    anyio.run(seed)
    return url


@pytest.mark.parametrize(
    "order",
    [
        ("ledger", "list", "--store", "{url}"),
        ("ledger", "--store", "{url}", "list"),
        ("ledger", "list", "--state", "verified", "--store", "{url}"),
    ],
    ids=["after", "before", "after-another-option"],
)
def test_list_reads_the_store_given_before_or_after_the_action(
    store_url: str, order: tuple[str, ...]
) -> None:
    result = x402_meter(*(arg.format(url=store_url) for arg in order))
    assert result.returncode == 0, result.stderr
    assert "r1 " in result.stdout


def test_every_action_takes_store_after_it(store_url: str) -> None:
    show = x402_meter("ledger", "show", "r1", "--store", store_url)
    assert json.loads(show.stdout)["receipt_id"] == "r1"
    export = x402_meter("ledger", "export", "--format", "json", "--store", store_url)
    assert [json.loads(line)["receipt_id"] for line in export.stdout.splitlines()] == ["r1"]
    voided = x402_meter("ledger", "voided", "--store", store_url)
    assert voided.returncode == 0, voided.stderr
    clear = x402_meter("ledger", "clear-voided", "0x" + "22" * 20, "--store", store_url)
    assert clear.returncode == 1  # read from this store: the payer is not refused there
    assert "is not refused" in clear.stderr
    retry = x402_meter(
        "ledger", "retry", "nope", "--facilitator-url", "http://127.0.0.1:9", "--store", store_url
    )
    assert retry.returncode == 1
    assert "no payment nope" in retry.stderr


def test_the_store_after_the_action_wins_over_the_one_before(
    store_url: str, tmp_path: Path
) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    after = x402_meter("ledger", "--store", empty, "list", "--store", store_url)
    before_only = x402_meter("ledger", "--store", empty, "list")
    assert "r1 " in after.stdout
    assert "r1 " not in before_only.stdout


def test_a_session_charge_is_not_retried_through_the_facilitator(tmp_path: Path) -> None:
    """A ``batch-settlement`` row's charge goes into its channel store: ``ledger retry``
    (which only knows the facilitator) leaves it to the meter's own worker."""
    path = tmp_path / "ledger.sqlite3"

    async def seed() -> None:
        store = SQLiteStore(path)
        try:
            await store.save(payment_row("s1", scheme="batch-settlement"))
        finally:
            await store.aclose()

    anyio.run(seed)
    done = x402_meter(
        "ledger", "retry", "s1", "--store", f"sqlite:///{path}", "--facilitator-url", "http://x"
    )
    assert done.returncode == 1
    assert "batch-settlement charge" in done.stderr
