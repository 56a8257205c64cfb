"""The claims worker, one component: which channels it claims, in what batches, with what
leases, and what it records, against a fake facilitator that keeps the contract's claim
rules (cumulative totals: a row at or below what is recorded changes nothing; a row above
the channel's balance spoils its whole batch) and can be down.

The worker talks to it through the real ``FacilitatorClient`` over an httpx mock transport,
so the bodies are the JSON a facilitator gets. The chain-backed tests are in
``tests/test_session_claims.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from eth_account import Account
from prometheus_client import CollectorRegistry
from x402.mechanisms.evm.batch_settlement.authorizer_signer import (
    LocalAuthorizerSigner,
    sign_claim_batch,
)
from x402.mechanisms.evm.batch_settlement.errors import (
    ERR_CLAIM_SIMULATION_FAILED,
    ERR_NOTHING_TO_SETTLE,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig, VoucherClaim
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id

from tests.test_channel_store_conformance import BACKENDS, channel_store_of
from x402_meter.channel_claims import ChannelClaims, ClaimPolicy
from x402_meter.config import MeterConfig
from x402_meter.devstack.accounts import PAYERS
from x402_meter.errors import ConfigurationError
from x402_meter.facilitator import FacilitatorClient
from x402_meter.metrics import PrometheusSessionMetrics
from x402_meter.runtime import MeterRuntime
from x402_meter.schemes.batch_settlement import BatchSettlementScheme
from x402_meter.store import ChannelRecord, ChannelStore, MemoryChannelStore, SQLiteChannelStore

pytestmark = pytest.mark.anyio

NETWORK = "eip155:31337"
RECEIVER = "0x" + "33" * 20
TOKEN = "0x" + "55" * 20
FACILITATOR_AUTHORIZER = "0x" + "44" * 20
NOW = 1_700_000_000.0


class Died(BaseException):
    """A worker's process dies (nothing after this point runs)."""


class FakeChain:
    """A facilitator's ``/settle`` for claims and sweeps, keeping the contract's totals."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        """Channel id -> its balance (a channel not named has plenty)."""
        self.claimed: dict[str, int] = {}
        """Channel id -> its totalClaimed."""
        self.receiver_claimed = 0
        self.receiver_settled = 0
        self.claims: list[dict[str, Any]] = []
        """Every claim body the facilitator got (the inner payload)."""
        self.sweeps = 0
        self.down = False
        self.after_claim: Callable[[], None] = lambda: None
        """Runs once a claim has landed, before the answer goes back."""
        self.claim_sent = anyio.Event()
        self.hold_claims: anyio.Event | None = None
        """While set to an unset event, claims wait for it (two workers overlap)."""
        self.transactions = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def facilitator(self) -> FacilitatorClient:
        return FacilitatorClient("http://facilitator.test", transport=self.transport())

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            return httpx.Response(503, text="down")
        assert request.url.path == "/settle"
        inner = json.loads(request.content)["paymentPayload"]["payload"]
        if inner["type"] == "settle":
            return self._sweep()
        assert inner["type"] == "claim"
        self.claims.append(inner)
        self.claim_sent.set()
        if self.hold_claims is not None:
            await self.hold_claims.wait()
        return self._claim(inner)

    def _claim(self, inner: dict[str, Any]) -> httpx.Response:
        rows = [VoucherClaim.from_dict(row) for row in inner["claims"]]
        applied: dict[str, int] = {}
        for row in rows:
            channel_id = compute_channel_id(row.channel, NETWORK).lower()
            total, before = int(row.total_claimed), self.claimed.get(channel_id, 0)
            if total <= before:
                continue  # the contract: already applied
            if total > int(row.max_claimable_amount) or total > self.balances.get(
                channel_id, 10**30
            ):
                return _answer(False, reason=ERR_CLAIM_SIMULATION_FAILED)
            applied[channel_id] = total - before
        for channel_id, delta in applied.items():
            self.claimed[channel_id] = self.claimed.get(channel_id, 0) + delta
            self.receiver_claimed += delta
        self.transactions += 1
        self.after_claim()
        return _answer(True, transaction=f"0x{self.transactions:064x}")

    def _sweep(self) -> httpx.Response:
        if self.receiver_claimed == self.receiver_settled:
            return _answer(False, reason=ERR_NOTHING_TO_SETTLE)
        self.receiver_settled = self.receiver_claimed
        self.sweeps += 1
        self.transactions += 1
        return _answer(True, transaction=f"0x{self.transactions:064x}")

    def rows_per_channel(self) -> dict[str, int]:
        """How many claim rows named each channel, over every claim sent."""
        counts: dict[str, int] = {}
        for inner in self.claims:
            for row in inner["claims"]:
                channel_id = compute_channel_id(
                    ChannelConfig.from_dict(row["voucher"]["channel"]), NETWORK
                ).lower()
                counts[channel_id] = counts.get(channel_id, 0) + 1
        return counts


def _answer(success: bool, *, transaction: str = "", reason: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"success": success, "transaction": transaction, "network": NETWORK}
    if reason is not None:
        body["errorReason"] = reason
    return httpx.Response(200 if success else 400, json=body)


def charged_channel(
    salt: int, charged: int, *, authorizer: str = FACILITATOR_AUTHORIZER, **changes: Any
) -> ChannelRecord:
    """A channel (never written) that has charged ``charged`` under a voucher for a bit more."""
    config = ChannelConfig(
        payer=PAYERS[0].address,
        payer_authorizer=PAYERS[0].address,
        receiver=RECEIVER,
        receiver_authorizer=authorizer,
        token=TOKEN,
        withdraw_delay=900,
        salt=f"0x{salt:064x}",
    )
    record = ChannelRecord(
        channel_id=compute_channel_id(config, NETWORK).lower(),
        network=NETWORK,
        payer=config.payer.lower(),
        payer_authorizer=config.payer_authorizer.lower(),
        receiver=RECEIVER,
        receiver_authorizer=authorizer.lower(),
        token=TOKEN,
        withdraw_delay=900,
        salt=config.salt,
        balance=10**9,
        synced_at=NOW,
        charged=charged,
        voucher_max=charged + 7,
        voucher_signature="0x" + "ab" * 65,
    )
    return dataclasses.replace(record, **changes)


async def stored(channels: ChannelStore, *records: ChannelRecord) -> list[ChannelRecord]:
    written = [await channels.put(record) for record in records]
    assert all(w is not None for w in written)
    return [w for w in written if w is not None]


async def record_of(channels: ChannelStore, record: ChannelRecord) -> ChannelRecord:
    current = await channels.get(record.channel_id)
    assert current is not None
    return current


def worker(channels: ChannelStore, chain: FakeChain, **policy: Any) -> ChannelClaims:
    return ChannelClaims(channels, chain.facilitator(), policy=ClaimPolicy(**policy))


# -- selection and batching ------------------------------------------------------------------


async def test_charged_channels_are_claimed_in_batches_recorded_and_swept_once() -> None:
    channels, chain = MemoryChannelStore(), FakeChain()
    records = await stored(channels, *(charged_channel(n, 100 * n) for n in range(1, 6)))

    report = await worker(channels, chain, max_per_batch=2).claim_once(NOW)

    assert [len(inner["claims"]) for inner in chain.claims] == [2, 2, 1]
    assert report.interrupted is None
    assert report.refused == {}
    assert chain.claimed == {r.channel_id: r.charged for r in records}
    assert (chain.receiver_claimed, chain.receiver_settled) == (1500, 1500)
    assert chain.sweeps == 1
    assert len(report.sweeps) == 1
    by_channel = {cid: c.transaction for c in report.claims for cid in c.totals}
    for record in records:
        after = await record_of(channels, record)
        assert (after.claimed, after.total_claimed) == (record.charged, record.charged)
        assert after.claim_transaction == by_channel[record.channel_id]
        assert (after.claiming, after.claiming_until) == (None, 0.0)
    assert await channels.claimable(NOW) == []


async def test_each_row_claims_the_charged_cumulative_under_the_latest_voucher() -> None:
    channels, chain = MemoryChannelStore(), FakeChain()
    (record,) = await stored(channels, charged_channel(1, 250))

    await worker(channels, chain).claim_once(NOW)

    ((row,),) = [inner["claims"] for inner in chain.claims]
    assert row["totalClaimed"] == "250"
    assert row["voucher"]["maxClaimableAmount"] == str(record.voucher_max)
    assert row["signature"] == record.voucher_signature
    assert "claimAuthorizerSignature" not in chain.claims[0]  # the facilitator signs


class ChargedWhileListed(MemoryChannelStore):
    """A store in which a request charges a channel right after the worker lists it."""

    async def claimable(self, now: float, limit: int = 100) -> list[ChannelRecord]:
        listed = await super().claimable(now, limit)
        for record in listed:
            await self.put(dataclasses.replace(record, charged=record.charged + 5))
        return listed


async def test_a_channel_charged_while_the_worker_takes_it_is_claimed_at_its_new_charge() -> None:
    channels, chain = ChargedWhileListed(), FakeChain()
    (record,) = await stored(channels, charged_channel(1, 100))

    report = await worker(channels, chain).claim_once(NOW)

    assert [c.totals for c in report.claims] == [{record.channel_id: 105}]
    assert (await record_of(channels, record)).claimed == 105


async def test_a_pass_with_nothing_to_claim_asks_the_facilitator_nothing() -> None:
    channels, chain = MemoryChannelStore(), FakeChain()
    await stored(
        channels,
        charged_channel(1, 0),  # nothing charged
        charged_channel(2, 300, claimed=300),  # all claimed
        charged_channel(3, 300, claiming="other", claiming_until=NOW + 60),  # another's claim
    )
    report = await worker(channels, chain).claim_once(NOW)
    assert (chain.claims, chain.sweeps, report.claims) == ([], 0, [])


async def test_what_was_charged_after_a_claim_is_claimed_next_time_and_only_that() -> None:
    channels, chain = MemoryChannelStore(), FakeChain()
    (record,) = await stored(channels, charged_channel(1, 100))
    claims = worker(channels, chain)
    await claims.claim_once(NOW)
    after = await record_of(channels, record)
    await stored(channels, dataclasses.replace(after, charged=160, voucher_max=170))

    await claims.claim_once(NOW + 60)

    assert [inner["claims"][0]["totalClaimed"] for inner in chain.claims] == ["100", "160"]
    assert chain.claimed[record.channel_id] == 160 == (await record_of(channels, record)).claimed


async def test_a_channel_whose_charge_the_chain_has_already_is_marked_claimed_silently() -> None:
    """A server that lost its state starts a channel from the chain's totalClaimed: that
    charge is not to claim again."""
    channels, chain = MemoryChannelStore(), FakeChain()
    (record,) = await stored(
        channels, charged_channel(1, 400, total_claimed=400, voucher_max=0, voucher_signature="")
    )
    await worker(channels, chain).claim_once(NOW)
    assert chain.claims == []
    assert (await record_of(channels, record)).claimed == 400


# -- leases: several workers, one store ------------------------------------------------------


@pytest.fixture(params=BACKENDS)
async def shared(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChannelStore]:
    """A channel store of each kind, for workers to share."""
    channels = channel_store_of(request, tmp_path)
    yield channels
    await channels.aclose()


async def test_two_workers_on_one_store_never_claim_a_channel_twice_at_once(
    shared: ChannelStore,
) -> None:
    """Both workers pass at the same moment while the first claims wait: every channel is
    claimed by exactly one of them, once (in each kind of store)."""
    channels, chain = shared, FakeChain()
    records = await stored(channels, *(charged_channel(n, 10 * n) for n in range(1, 9)))
    chain.hold_claims = anyio.Event()
    one, other = worker(channels, chain, max_per_batch=3), worker(channels, chain, max_per_batch=3)
    reports = []

    async def run(claims: ChannelClaims) -> None:
        reports.append(await claims.claim_once(NOW))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run, one)
        await chain.claim_sent.wait()
        tasks.start_soon(run, other)
        await anyio.wait_all_tasks_blocked()
        chain.hold_claims.set()

    assert chain.rows_per_channel() == {r.channel_id: 1 for r in records}
    assert chain.claimed == {r.channel_id: r.charged for r in records}
    assert sum(len(c.totals) for report in reports for c in report.claims) == 8


async def test_a_claim_held_by_a_worker_that_died_is_taken_after_its_lease_and_pays_nothing_twice(
    tmp_path: Path,
) -> None:
    """A worker dies after its claim landed and before it recorded it. A new worker on the
    same SQLite file leaves the channels alone while the dead one's lease runs, then claims
    them again: the contract applies nothing twice, and the records catch up."""
    path = tmp_path / "ledger.db"
    first_store, chain = SQLiteChannelStore(path), FakeChain()
    records = await stored(first_store, *(charged_channel(n, 100 * n) for n in range(1, 4)))

    def die() -> None:
        raise Died

    chain.after_claim = die
    with pytest.raises(Died):
        await worker(first_store, chain, lease_seconds=120).claim_once(NOW)
    await first_store.aclose()
    assert chain.claimed == {r.channel_id: r.charged for r in records}
    chain.after_claim = lambda: None

    again = SQLiteChannelStore(path)
    try:
        restarted = worker(again, chain, lease_seconds=120)
        assert (await restarted.claim_once(NOW + 60)).claims == []  # the lease still runs
        report = await restarted.claim_once(NOW + 121)
        assert [len(c.totals) for c in report.claims] == [3]
        assert chain.claimed == {r.channel_id: r.charged for r in records}
        assert chain.receiver_claimed == 600  # not 1200
        assert chain.receiver_settled == 600
        for record in records:
            assert (await record_of(again, record)).claimed == record.charged
    finally:
        await again.aclose()


# -- failures --------------------------------------------------------------------------------


async def test_a_facilitator_outage_loses_no_charge_and_the_next_pass_claims_it() -> None:
    channels, chain = MemoryChannelStore(), FakeChain()
    records = await stored(channels, charged_channel(1, 100), charged_channel(2, 200))
    claims = worker(channels, chain)
    chain.down = True

    report = await claims.claim_once(NOW)

    assert report.interrupted is not None
    assert report.claims == []
    for record in records:
        after = await record_of(channels, record)
        assert (after.claimed, after.claiming, after.claiming_until) == (0, None, 0.0)
    chain.down = False
    report = await claims.claim_once(NOW + 1)
    assert report.interrupted is None
    assert chain.claimed == {r.channel_id: r.charged for r in records}


async def test_a_channel_the_contract_refuses_is_isolated_and_backs_off_the_others_land() -> None:
    channels, chain = MemoryChannelStore(), FakeChain()
    records = await stored(channels, *(charged_channel(n, 100) for n in range(1, 6)))
    bad = records[3]
    chain.balances[bad.channel_id] = 50  # a withdrawal took what it had charged

    report = await worker(channels, chain, retry_first=5.0).claim_once(NOW)

    assert report.refused == {bad.channel_id: ERR_CLAIM_SIMULATION_FAILED}
    assert chain.claimed == {r.channel_id: 100 for r in records if r is not bad}
    refused = await record_of(channels, bad)
    assert (refused.claimed, refused.claim_failures) == (0, 1)
    assert refused.claim_error == ERR_CLAIM_SIMULATION_FAILED
    assert refused.claiming_until == NOW + 5.0
    assert await channels.claimable(NOW + 4) == []
    assert [r.channel_id for r in await channels.claimable(NOW + 5)] == [bad.channel_id]


async def test_a_failed_sweep_is_tried_again_by_the_next_pass() -> None:
    channels, chain = MemoryChannelStore(), FakeChain()
    await stored(channels, charged_channel(1, 100))
    claims = worker(channels, chain)
    real = chain.handle

    async def sweeps_down(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["paymentPayload"]["payload"]["type"] == "settle":
            return httpx.Response(503)
        return await real(request)

    chain.handle = sweeps_down  # type: ignore[method-assign]
    claims.facilitator = chain.facilitator()
    first = await claims.claim_once(NOW)
    assert (len(first.claims), first.sweeps, chain.receiver_settled) == (1, [], 0)
    assert first.interrupted is not None

    chain.handle = real  # type: ignore[method-assign]
    claims.facilitator = chain.facilitator()
    second = await claims.claim_once(NOW + 1)
    assert (second.claims, len(second.sweeps), chain.receiver_settled) == ([], 1, 100)


def test_backoff_doubles_from_the_first_wait_up_to_the_longest() -> None:
    policy = ClaimPolicy(retry_first=5.0, retry_longest=30.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [5.0, 10.0, 20.0, 30.0, 30.0]


@pytest.mark.parametrize("options", [{"max_per_batch": 0}, {"max_per_batch": 129}, {"interval": 0}])
def test_a_claim_policy_out_of_bounds_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ClaimPolicy(**options)


# -- who signs -------------------------------------------------------------------------------


async def test_the_sellers_authorizer_signs_its_channels_and_the_facilitator_the_others() -> None:
    own = Account.from_key(PAYERS[5].private_key)
    channels, chain = MemoryChannelStore(), FakeChain()
    mine = await stored(
        channels,
        charged_channel(1, 100, authorizer=own.address),
        charged_channel(2, 200, authorizer=own.address),
    )
    await stored(channels, charged_channel(3, 300))
    signer = LocalAuthorizerSigner(own)
    claims = ChannelClaims(channels, chain.facilitator(), authorizer=signer)

    await claims.claim_once(NOW)

    signed = [inner for inner in chain.claims if "claimAuthorizerSignature" in inner]
    unsigned = [inner for inner in chain.claims if "claimAuthorizerSignature" not in inner]
    assert [len(inner["claims"]) for inner in signed] == [2]
    assert [len(inner["claims"]) for inner in unsigned] == [1]
    rows = [VoucherClaim.from_dict(row) for row in signed[0]["claims"]]
    assert [int(r.total_claimed) for r in rows] == [r.charged for r in mine]
    assert signed[0]["claimAuthorizerSignature"] == sign_claim_batch(signer, rows, NETWORK)


# -- running in the background ---------------------------------------------------------------


async def test_wake_runs_a_pass_at_once_and_aclose_stops_the_worker() -> None:
    channels, chain = MemoryChannelStore(), FakeChain()
    claims = worker(channels, chain, interval=3600.0)
    claims.ensure_running()  # its first pass finds nothing
    record = charged_channel(1, 100, synced_at=0.0)
    await stored(channels, record)

    claims.wake(record.channel_id)
    with anyio.fail_after(10):
        await chain.claim_sent.wait()
    await claims.aclose()

    assert chain.rows_per_channel() == {record.channel_id: 1}
    assert (await record_of(channels, record)).claimed == 100


async def test_claim_now_runs_a_pass_in_the_workers_loop_and_reports_it() -> None:
    channels, chain = MemoryChannelStore(), FakeChain()
    claims = worker(channels, chain, interval=3600.0)
    (record,) = await stored(channels, charged_channel(1, 100))
    assert (await claims.claim_now()).claims[0].totals == {record.channel_id: 100}  # not running

    claims.ensure_running()
    after = await record_of(channels, record)
    await stored(channels, dataclasses.replace(after, charged=150, voucher_max=150))
    with anyio.fail_after(10):
        report = await claims.claim_now()
    waiting = claims.next_pass()
    await claims.aclose()

    assert [c.totals for c in report.claims] == [{record.channel_id: 150}]
    with pytest.raises(asyncio.CancelledError):  # a pass that never came
        await waiting
    assert chain.claimed == {record.channel_id: 150}


# -- options and wiring ------------------------------------------------------------------------


def session_config(**options: Any) -> MeterConfig:
    return MeterConfig(
        pay_to=RECEIVER,
        price_per_token="1",
        schemes=("upto", "batch-settlement"),
        store="memory://",
        **options,
    )


def test_the_claim_interval_leaves_half_the_withdraw_window_for_the_claim() -> None:
    """Withdraw delay 900 s, mirror trusted 300 s, answers up to 300 s: 150 s at most."""
    assert session_config(session_claim_interval=150).session_claim_interval == 150
    with pytest.raises(ConfigurationError, match="at most 150 seconds"):
        session_config(session_claim_interval=151)
    with pytest.raises(ConfigurationError, match="session_claim_interval"):
        session_config(session_claim_interval=0)


def test_a_withdraw_delay_that_leaves_no_time_to_claim_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="leaves no time to claim"):
        session_config(session_state_ttl=600.0, max_timeout_seconds=300)


def test_without_sessions_the_claim_options_are_not_checked() -> None:
    config = MeterConfig(pay_to=RECEIVER, price_per_token="1", session_claim_interval=10_000)
    assert MeterRuntime(config).claims is None


@pytest.mark.parametrize("per_batch", [0, 129, True])
def test_claims_per_batch_is_one_to_what_the_contract_takes(per_batch: int) -> None:
    with pytest.raises(ConfigurationError, match="session_claims_per_batch"):
        session_config(session_claims_per_batch=per_batch)


async def test_the_claims_worker_runs_beside_the_settlement_sweeper() -> None:
    runtime = MeterRuntime(session_config(session_claims_per_batch=7))
    claims, sessions = runtime.claims, runtime.schemes["batch-settlement"]
    assert claims is not None
    assert isinstance(sessions, BatchSettlementScheme)
    assert claims.channels is sessions.channels
    assert claims.policy == ClaimPolicy(interval=60.0, max_per_batch=7)
    assert sessions.on_withdrawal == claims.wake
    runtime.settler.ensure_sweeper()
    assert claims.running()
    await runtime.settler.aclose()
    assert not claims.running()


# -- what operators see: the claim log and the metrics ---------------------------------------


def session_metrics() -> tuple[PrometheusSessionMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return PrometheusSessionMetrics(registry, "x402_meter"), registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_each_landed_claim_is_logged_with_what_it_added_to_each_channel() -> None:
    channels, chain = MemoryChannelStore(), FakeChain()
    first, second = await stored(
        channels, charged_channel(1, 300, claimed=100, total_claimed=100), charged_channel(2, 50)
    )

    report = await worker(channels, chain).claim_once(NOW)

    (claim,) = await channels.claims()
    assert claim.transaction == report.claims[0].transaction
    assert (claim.network, claim.receiver, claim.token) == (NETWORK, RECEIVER, TOKEN)
    assert {(c.channel_id, c.amount, c.total_claimed) for c in claim.channels} == {
        (first.channel_id, 200, 300),
        (second.channel_id, 50, 50),
    }
    assert claim.amount == 250


async def test_claims_failures_sweeps_and_the_unclaimed_amount_are_counted() -> None:
    channels, chain = MemoryChannelStore(), FakeChain()
    records = await stored(channels, *(charged_channel(n, 100) for n in range(1, 4)))
    chain.balances[records[2].channel_id] = 50  # its claim is refused
    metrics, registry = session_metrics()
    claims = ChannelClaims(channels, chain.facilitator(), metrics=metrics)

    await claims.claim_once(NOW)

    money = {"asset": TOKEN, "network": NETWORK}
    assert sample(registry, "x402_meter_session_claims_total", **money) == 2  # 2 halves land
    assert sample(registry, "x402_meter_session_claimed_channels_total", **money) == 2
    assert sample(registry, "x402_meter_session_claimed_amount_total", **money) == 200
    failures = {"reason": ERR_CLAIM_SIMULATION_FAILED}
    assert sample(registry, "x402_meter_session_claim_failures_total", **failures) == 1
    assert sample(registry, "x402_meter_session_sweeps_total", **money) == 1
    assert sample(registry, "x402_meter_session_unclaimed_amount", **money) == 100  # backed off

    chain.down = True
    await stored(channels, charged_channel(4, 30))
    await claims.claim_once(NOW + 10_000)
    down = {"reason": "facilitator_unavailable"}
    assert sample(registry, "x402_meter_session_claim_failures_total", **down) == 2
    assert sample(registry, "x402_meter_session_unclaimed_amount", **money) == 130
