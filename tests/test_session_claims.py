"""The claims worker on the chain: the charges of sessions claimed in batches and swept.

Everything is real: payers are the official SDK's batch-settlement client paying the stub
model behind X402Meter (in uvicorn, a SQLite ledger with the channels beside it), the
meter's claims worker claims through the bundled facilitator over HTTP, and claims,
sweeps and withdrawals are transactions on anvil. Balances (the channels' ``channels()``,
the payee's ``receivers()``, token balances) are read from the chain and checked to the
atomic unit; the facilitator's transactions are counted by its account's nonce.

The seller's claims worker passes only when asked (``claim_now``), at its start, or when a
withdrawal shows (its interval is hours long: ``QUIET_CLAIMS``), so each test decides when
claims happen. The withdrawal test moves the chain's clock: it has a stack of its own.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Final

import anyio
import pytest
from eth_account.signers.local import LocalAccount
from web3.exceptions import ContractLogicError
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from tests.channel_seller import Balances, payer_client, payer_scheme
from tests.examples.conftest import new_funded_payer
from tests.test_channels_sdk import advance_clock, contracts, facilitator_transactions, send_as
from tests.test_sessions_sdk import (
    CHAT,
    QUESTION,
    QUIET_CLAIMS,
    Seller,
    charged_amount,
    sdk_channel,
    seller,
)
from x402_meter.channel_claims import ChannelClaims, ClaimPolicy
from x402_meter.devstack import LocalStack, local_stack
from x402_meter.errors import FacilitatorUnavailableError
from x402_meter.facilitator import FacilitatorClient
from x402_meter.store import ChannelRecord, SQLiteChannelStore

pytestmark = pytest.mark.anyio

LEASE: Final = 120.0


class Died(BaseException):
    """The claims worker's process dies here: nothing after this point runs."""


class DiesAfterClaims(FacilitatorClient):
    """The facilitator client of a worker that dies once its ``claims``-th claim has landed
    on chain, before the worker records it."""

    def __init__(self, stack: LocalStack, claims: int) -> None:
        super().__init__(stack.facilitator_url, api_key=stack.facilitator_api_key)
        self.left = claims

    async def settle(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        requirements: PaymentRequirements | PaymentRequirementsV1,
    ) -> SettleResponse:
        answer = await super().settle(payload, requirements)
        if isinstance(payload, PaymentPayload) and payload.payload.get("type") == "claim":
            assert answer.success, answer
            self.left -= 1
            if self.left == 0:
                raise Died
        return answer


async def pay_answers(stack: LocalStack, shop: Seller, payer: LocalAccount, count: int) -> int:
    """``count`` JSON answers paid in one session by ``payer``'s SDK client (the first one
    deposits); what they were charged, added up from their PAYMENT-RESPONSE."""
    client = payer_client(stack, payer_scheme(stack, payer))
    charged = 0
    async with x402HttpxClient(client, timeout=60, base_url=shop.base) as http:
        for _ in range(count):
            answer = await http.post(CHAT, json=QUESTION)
            assert answer.status_code == 200, answer.text
            charged += charged_amount(answer)
    return charged


async def channel_of(shop: Seller, payer: LocalAccount) -> ChannelRecord:
    (record,) = [r for r in await shop.channels.list() if r.payer == payer.address.lower()]
    return record


def config_of(record: ChannelRecord) -> ChannelConfig:
    return sdk_channel(record).channel_config


async def test_the_charges_of_several_channels_are_claimed_in_one_transaction_and_swept(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """Three payers, three channels, each charged a different sum by vouchers: one pass of
    the meter's worker claims all three in one transaction and sweeps their sum to payTo
    in one more. Each channel's totalClaimed is its charge; the payers' tokens stay where
    they are (in escrow, the rest of their deposits)."""
    stack = x402_local_stack
    chain = contracts(stack)
    payers = [new_funded_payer(stack) for _ in range(3)]
    async with seller(stack, tmp_path) as shop:
        charged = [await pay_answers(stack, shop, p, n) for n, p in enumerate(payers, start=1)]
        records = [await channel_of(shop, p) for p in payers]
        assert [r.charged for r in records] == charged
        total = sum(charged)
        before = [Balances.read(stack, p.address, shop.pay_to) for p in payers]
        sent, calls = facilitator_transactions(stack), len(shop.facilitator.paths)
        claims = shop.meter.runtime.claims
        assert claims is not None

        report = await claims.claim_now()

        assert report.interrupted is None
        assert report.refused == {}
        (claim,) = report.claims
        assert claim.totals == {r.channel_id: r.charged for r in records}
        assert len(report.sweeps) == 1
        assert facilitator_transactions(stack) == sent + 2
        assert shop.facilitator.paths[calls:] == ["/settle", "/settle"]  # a claim, a sweep
        for record, payer, balances in zip(records, payers, before, strict=True):
            on_chain = chain.channel(config_of(record))
            assert (on_chain.balance, on_chain.total_claimed) == (record.balance, record.charged)
            assert Balances.read(stack, payer.address, shop.pay_to) == balances.moved(
                contract=-total, pay_to=total
            )
            after = await channel_of(shop, payer)
            assert (after.claimed, after.total_claimed) == (record.charged, record.charged)
            assert after.claim_transaction == claim.transaction
        assert chain.receiver_totals(shop.pay_to) == (total, total)
        assert chain.token_balance(shop.pay_to) == total

        assert (await claims.claim_now()).claims == []  # nothing left: no transaction
        assert facilitator_transactions(stack) == sent + 2


async def test_a_worker_restarted_on_the_sqlite_file_claims_what_is_left_and_nothing_twice(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """Five channels, two per claim. A worker claims and records the first two, claims the
    next two and dies before recording them. A new worker on the same SQLite file claims
    the fifth at once and leaves the dead worker's two alone while its lease runs; then it
    claims them again, which moves nothing on chain (the contract's totals are
    cumulative). Every channel ends claimed exactly its charge, and payTo gets exactly the
    sum."""
    stack = x402_local_stack
    chain = contracts(stack)
    payers = [new_funded_payer(stack) for _ in range(5)]
    async with seller(stack, tmp_path) as shop:
        charged: dict[str, int] = {p.address: await pay_answers(stack, shop, p, 1) for p in payers}
        configs = {p.address: config_of(await channel_of(shop, p)) for p in payers}
        pay_to = shop.pay_to
    total = sum(charged.values())
    path = tmp_path / "ledger.db"
    policy = ClaimPolicy(max_per_batch=2, lease_seconds=LEASE)
    sent = facilitator_transactions(stack)

    dying = SQLiteChannelStore(path)
    with pytest.raises(Died):
        await ChannelClaims(dying, DiesAfterClaims(stack, 2), policy=policy).claim_once()
    await dying.aclose()
    assert facilitator_transactions(stack) == sent + 2
    claimed_by_the_dead: dict[str, int] = {
        p: chain.channel(c).total_claimed for p, c in configs.items()
    }
    assert sorted(claimed_by_the_dead.values()).count(0) == 1
    assert chain.receiver_totals(pay_to) == (total - _unclaimed(charged, claimed_by_the_dead), 0)

    store = SQLiteChannelStore(path)
    facilitator = FacilitatorClient(stack.facilitator_url, api_key=stack.facilitator_api_key)
    try:
        restarted = ChannelClaims(store, facilitator, policy=policy)
        first = await restarted.claim_once()
        assert [len(c.totals) for c in first.claims] == [1]  # the one nobody had claimed
        assert len(first.sweeps) == 1
        assert chain.receiver_totals(pay_to) == (total, total)
        settled_pay_to = chain.token_balance(pay_to)
        assert settled_pay_to == total

        after_lease = await restarted.claim_once(time.time() + LEASE + 1)
        assert [len(c.totals) for c in after_lease.claims] == [2]  # the dead worker's two
        assert after_lease.sweeps == []  # nothing more to sweep: nothing more was claimed
    finally:
        await store.aclose()
        await facilitator.aclose()

    assert facilitator_transactions(stack) == sent + 5  # 2 + 1 claims, a sweep, the repeat
    for payer, config in configs.items():
        assert chain.channel(config).total_claimed == charged[payer]
    assert chain.receiver_totals(pay_to) == (total, total)
    assert chain.token_balance(pay_to) == total
    check = SQLiteChannelStore(path)
    try:
        assert sorted(r.claimed for r in await check.list()) == sorted(charged.values())
        assert await check.claimable(time.time() + 10 * LEASE) == []
    finally:
        await check.aclose()


class SweepsUnavailable(FacilitatorClient):
    """The facilitator client of a worker whose sweeps do not get through (the facilitator
    went away after the claim landed)."""

    def __init__(self, stack: LocalStack) -> None:
        super().__init__(stack.facilitator_url, api_key=stack.facilitator_api_key)

    async def settle(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        requirements: PaymentRequirements | PaymentRequirementsV1,
    ) -> SettleResponse:
        if isinstance(payload, PaymentPayload) and payload.payload.get("type") == "settle":
            raise FacilitatorUnavailableError("the facilitator went away")
        return await super().settle(payload, requirements)


async def test_a_sweep_that_failed_before_a_restart_is_made_by_the_next_worker_at_once(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """A worker claims two channels, then cannot sweep (the facilitator went away) and
    stops. The next worker on the SQLite file has nothing to claim, and sweeps at its first
    pass what the first one claimed: payTo gets it without waiting for a new claim."""
    stack = x402_local_stack
    chain = contracts(stack)
    payers = [new_funded_payer(stack) for _ in range(2)]
    async with seller(stack, tmp_path) as shop:
        total = sum([await pay_answers(stack, shop, p, 1) for p in payers])
        pay_to = shop.pay_to
    path = tmp_path / "ledger.db"

    store = SQLiteChannelStore(path)
    unswept = SweepsUnavailable(stack)
    facilitator = FacilitatorClient(stack.facilitator_url, api_key=stack.facilitator_api_key)
    try:
        first = await ChannelClaims(store, unswept).claim_once()
        assert [len(c.totals) for c in first.claims] == [2]
        assert (first.sweeps, first.interrupted) == ([], "the facilitator went away")
        assert chain.receiver_totals(pay_to) == (total, 0)

        restarted = await ChannelClaims(store, facilitator).claim_once()
        assert restarted.claims == []
        assert len(restarted.sweeps) == 1
        assert chain.receiver_totals(pay_to) == (total, total)
        assert chain.token_balance(pay_to) == total
    finally:
        await store.aclose()
        await unswept.aclose()
        await facilitator.aclose()


def _unclaimed(charged: dict[str, int], on_chain: dict[str, int]) -> int:
    return sum(charged[p] - on_chain[p] for p in charged)


async def test_a_withdrawal_the_meter_sees_is_claimed_at_once_before_it_can_be_finalized(
    tmp_path: Path,
) -> None:
    """The payer asks the contract for its deposit back. Its next request reaches the meter
    with a stale mirror: the facilitator's snapshot shows the withdrawal, the request is
    refused, and the worker claims the channel at once (and sweeps). When the withdraw delay
    has passed the payer gets only what was not charged."""
    with local_stack(log_dir=tmp_path) as own:  # the clock moves: no one else here
        chain = contracts(own)
        payer = new_funded_payer(own)
        async with seller(own, tmp_path) as shop:
            charged = await pay_answers(own, shop, payer, 3)
            record = await channel_of(shop, payer)
            config = config_of(record)
            deposit = record.balance
            start = Balances.read(own, payer.address, shop.pay_to)

            send_as(own, payer, chain.initiate_withdraw_call(config, deposit))
            assert await shop.channels.put(_stale(record)) is not None
            claims = shop.meter.runtime.claims
            assert claims is not None
            woken = claims.next_pass()
            client = payer_client(own, payer_scheme(own, payer))
            async with x402HttpxClient(client, timeout=60, base_url=shop.base) as http:
                refused = await http.post(CHAT, json=QUESTION)
            with anyio.fail_after(60):
                report = await woken

            assert refused.status_code == 402
            assert refused.json()["reason"] == "channel_withdrawal_pending"
            assert [c.totals for c in report.claims] == [{record.channel_id: charged}]
            assert len(report.sweeps) == 1
            assert chain.channel(config).total_claimed == charged
            assert (await channel_of(shop, payer)).withdraw_requested_at > 0

        advance_clock(own, int(QUIET_CLAIMS["session_withdraw_delay"]) - 60)
        with pytest.raises(ContractLogicError):
            chain.finalize_withdraw_call(config).call({"from": payer.address})
        advance_clock(own, 60)
        send_as(own, payer, chain.finalize_withdraw_call(config))

        assert Balances.read(own, payer.address, shop.pay_to) == start.moved(
            payer=deposit - charged, contract=-deposit, pay_to=charged
        )


def _stale(record: ChannelRecord) -> ChannelRecord:
    """``record`` with a mirror too old to admit a voucher on."""
    return dataclasses.replace(record, synced_at=0.0)
