"""The settlement worker on its own, with a scripted facilitator (the end-to-end and fault
tests use the real one): retries, permanent refusals, reconciliation, recovery, hooks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from x402.schemas import SettleResponse

from tests.ledger_rows import ledger, payment_row
from x402_meter.errors import FacilitatorUnavailableError
from x402_meter.facilitator import FacilitatorClient
from x402_meter.metrics import PrometheusMetrics
from x402_meter.settlement import RetryPolicy, Settler
from x402_meter.store import LedgerState, MemoryStore, PaymentRecord, PaymentStore, SQLiteStore

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(first=0.001, longest=0.002, inline_attempts=3, sweep_every=0.01)


class ScriptedFacilitator(FacilitatorClient):
    """Answers /settle from a script: a SettleResponse, or an exception to raise."""

    def __init__(self, *answers: SettleResponse | Exception) -> None:
        super().__init__("http://scripted.invalid")
        self.answers: Iterator[SettleResponse | Exception] = iter(answers)
        self.amounts: list[str] = []

    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        self.amounts.append(requirements.amount)
        answer = next(self.answers)
        if isinstance(answer, Exception):
            raise answer
        return answer


def ok(tx: str = "0xabc") -> SettleResponse:
    return SettleResponse(success=True, transaction=tx, network="eip155:31337")


def refused(reason: str, tx: str = "") -> SettleResponse:
    return SettleResponse(
        success=False, error_reason=reason, transaction=tx, network="eip155:31337"
    )


async def saved(store: PaymentStore, receipt_id: str = "r1", **changes: object) -> PaymentRecord:
    """A row as the middleware leaves it: in the store, before the worker takes it."""
    record = row(receipt_id, **changes)
    await store.save(record)
    return record


def row(receipt_id: str = "r1", **changes: object) -> PaymentRecord:
    """A payment whose body closed with a charge of 346, ready to settle."""
    defaults: dict[str, object] = {
        "state": LedgerState.TO_SETTLE,
        "amount": 346,
        "created_at": time.time(),
    }
    return payment_row(receipt_id, **{**defaults, **changes})


async def test_a_settlement_records_the_transaction_and_charges_the_row_amount() -> None:
    store, facilitator = MemoryStore(), ScriptedFacilitator(ok("0xfeed"))
    result = await Settler(facilitator, store, retry=FAST).settle(await saved(store))
    assert (result.state, result.transaction, result.attempts) == (LedgerState.SETTLED, "0xfeed", 1)
    assert facilitator.amounts == ["346"]
    assert await store.get("r1") == result


async def test_nothing_to_charge_sends_no_settlement() -> None:
    store, facilitator = MemoryStore(), ScriptedFacilitator()
    result = await Settler(facilitator, store, retry=FAST).settle(await saved(store, amount=0))
    assert result.state is LedgerState.NOT_CHARGED
    assert facilitator.amounts == []


async def test_transient_failures_are_retried_with_backoff_until_success() -> None:
    down = FacilitatorUnavailableError("connection refused")
    store, facilitator = (
        MemoryStore(),
        ScriptedFacilitator(down, refused("settlement_pending", "0xpend"), ok()),
    )
    result = await Settler(facilitator, store, retry=FAST).settle(await saved(store))
    assert (result.state, result.attempts, result.error) == (LedgerState.SETTLED, 3, None)


async def test_a_permanent_refusal_fails_the_row_and_keeps_the_reason() -> None:
    store = MemoryStore()
    result = await Settler(
        ScriptedFacilitator(refused("permit2_deadline_expired")), store, retry=FAST
    ).settle(await saved(store))
    assert (result.state, result.error) == (LedgerState.FAILED, "permit2_deadline_expired")


async def test_a_refusal_after_an_ambiguous_attempt_says_so() -> None:
    store = MemoryStore()
    facilitator = ScriptedFacilitator(
        FacilitatorUnavailableError("ReadTimeout"), refused("invalid_upto_evm_transaction_failed")
    )
    result = await Settler(facilitator, store, retry=FAST).settle(await saved(store))
    assert result.state is LedgerState.FAILED
    assert result.error == "invalid_upto_evm_transaction_failed (after: ReadTimeout)"


async def test_when_inline_retries_run_out_the_row_waits_for_the_sweeper_unleased() -> None:
    store = MemoryStore()
    down = FacilitatorUnavailableError("down")
    settler = Settler(ScriptedFacilitator(down, down, down, ok()), store, retry=FAST)
    left = await settler.settle(
        await saved(store, lease_owner=settler.owner, lease_until=time.time() + 30)
    )
    assert (left.state, left.attempts, left.lease_owner) == (LedgerState.TO_SETTLE, 3, None)
    assert await settler.sweep(now=left.next_attempt_at - 0.001) == 0  # not due yet
    assert await settler.sweep(now=left.next_attempt_at) == 1
    await settler.drain()
    assert (await store.get("r1")).state is LedgerState.SETTLED  # type: ignore[union-attr]


async def test_the_sweeper_settles_a_dead_servers_stream_for_its_checkpoint(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "ledger.db")
    orphan = row(
        state=LedgerState.VERIFIED,
        amount=120,
        output_tokens=60,
        lease_owner="dead:1",
        lease_until=time.time() - 1,
    )
    await store.save(orphan)
    facilitator = ScriptedFacilitator(ok())
    settler = Settler(facilitator, store, retry=FAST)
    assert await settler.sweep() == 1
    await settler.drain()
    settled = await store.get("r1")
    assert settled is not None
    assert (settled.state, settled.amount) == (LedgerState.SETTLED, 120)
    assert facilitator.amounts == ["120"]


async def test_a_stream_that_is_still_leased_is_left_alone() -> None:
    store = MemoryStore()
    await store.save(
        row(state=LedgerState.VERIFIED, lease_owner="alive:1", lease_until=time.time() + 30)
    )
    assert await Settler(ScriptedFacilitator(), store, retry=FAST).sweep() == 0


async def test_two_workers_never_settle_the_same_row(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "ledger.db")
    await store.save(row())
    first, second = ScriptedFacilitator(ok()), ScriptedFacilitator(ok())
    taken = [
        await Settler(first, store, retry=FAST).sweep(),
        await Settler(second, store, retry=FAST).sweep(),
    ]
    assert sorted(taken) == [0, 1]


async def test_hooks_hear_of_settled_and_failed_payments_and_cannot_break_them() -> None:
    heard: list[tuple[str, LedgerState]] = []

    async def on_settled(record: PaymentRecord) -> None:
        heard.append(("settled", record.state))
        raise RuntimeError("a buggy hook")

    def on_failed(record: PaymentRecord) -> None:
        heard.append(("failed", record.state))

    store = MemoryStore()
    settler = Settler(
        ScriptedFacilitator(ok(), refused("nope")),
        store,
        retry=FAST,
        on_settled=on_settled,
        on_settlement_failed=on_failed,
    )
    assert (await settler.settle(await saved(store, "a"))).state is LedgerState.SETTLED
    assert (await settler.settle(await saved(store, "b"))).state is LedgerState.FAILED
    assert heard == [("settled", LedgerState.SETTLED), ("failed", LedgerState.FAILED)]


async def test_metrics_count_settlements_and_amounts() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    store = MemoryStore()
    settler = Settler(ScriptedFacilitator(ok()), store, retry=FAST, metrics=metrics)
    await settler.settle(await saved(store))
    labels = {"asset": "0x" + "11" * 20, "network": "eip155:31337"}
    assert registry.get_sample_value("x402_meter_settled_amount_total", labels) == 346
    assert registry.get_sample_value("x402_meter_settlements_pending") == 0
    assert (
        registry.get_sample_value("x402_meter_settlement_seconds_count", {"state": "settled"}) == 1
    )


async def test_the_ledger_cli_lists_shows_and_exports(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    store = SQLiteStore(tmp_path / "ledger.db")
    await store.save(
        row("settled-one", state=LedgerState.SETTLED, transaction="0xt1", created_at=1.0)
    )
    await store.save(row("failed-one", state=LedgerState.FAILED, error="nope", created_at=2.0))
    await store.aclose()

    listing = ledger(url, "list", "--state", "failed")
    assert listing.returncode == 0
    assert "failed-one" in listing.stdout
    assert "settled-one" not in listing.stdout
    shown = json.loads(ledger(url, "show", "settled-one").stdout)
    assert (shown["state"], shown["transaction"], shown["amount"]) == ("settled", "0xt1", 346)
    exported = ledger(url, "export", "--format", "csv").stdout.splitlines()
    assert exported[0].startswith("receipt_id,key,state")
    assert [line.split(",")[0] for line in exported[1:]] == ["failed-one", "settled-one"]
    json_lines = [
        json.loads(line) for line in ledger(url, "export", "--format", "json").stdout.splitlines()
    ]
    assert {line["receipt_id"] for line in json_lines} == {"failed-one", "settled-one"}
    assert ledger(url, "show", "missing").returncode == 1
