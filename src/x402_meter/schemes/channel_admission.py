"""Admitting one request on a channel: the baseline, the voucher's cumulative, the lock, the
deposit. A fresh object per request (its state is the request's).

A voucher on a channel whose mirror is fresh is admitted with no facilitator call. The
facilitator's ``/verify`` (which returns the channel on chain) is asked when the server has
no record of the channel, when the mirror is stale, for a contract wallet's voucher (only
the chain can check its EIP-1271 signature), and for every deposit, which it then settles
before anything is served. The charged baseline of a channel the server has no record of
is the ``totalClaimed`` the facilitator reports, never the client's voucher (the spec).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any, Final

import anyio
from x402.mechanisms.evm.batch_settlement.errors import (
    ERR_CHANNEL_BUSY,
    ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED,
    ERR_CUMULATIVE_AMOUNT_MISMATCH,
    ERR_CUMULATIVE_EXCEEDS_BALANCE,
    ERR_VERIFICATION_STATE_UNAVAILABLE,
)
from x402.schemas import PaymentPayload, PaymentRequirements

from x402_meter.schemes.base import Refusal
from x402_meter.schemes.channel_payload import ChannelPayment
from x402_meter.schemes.channel_state import ChainSnapshot, channel_state
from x402_meter.store import ChannelRecord

if TYPE_CHECKING:
    from x402_meter.facilitator import FacilitatorClient
    from x402_meter.schemes.batch_settlement import BatchSettlementScheme

logger = logging.getLogger("x402_meter")

CHANNEL_WITHDRAWAL_PENDING: Final = "channel_withdrawal_pending"
CHARGE_WAIT_SECONDS: Final = 5.0
"""How long a request waits for this process to finish charging its channel's last answer."""
HOLD_ATTEMPTS: Final = 3
"""Reads of the channel one admission makes when its compare-and-set keeps losing to other
writes, before it calls the channel busy."""


class HoldLost:
    """The channel's record changed between the read and the compare-and-set."""


class ChannelAdmission:
    """Admits one payment on its channel, or says why not (``Refusal``)."""

    def __init__(
        self,
        scheme: BatchSettlementScheme,
        payment: ChannelPayment,
        payload: PaymentPayload,
        requirements: PaymentRequirements,
        *,
        key: str,
        maximum: int,
        until: float,
    ) -> None:
        self.scheme = scheme
        self.channels = scheme.channels
        self.payment = payment
        self.payload = payload
        self.requirements = requirements
        self.key = key
        """This request's hold on the channel (its ledger row's key)."""
        self.maximum = maximum
        """What this request may cost at most: the voucher's increment."""
        self.until = until
        """When this request's hold on the channel ends (its answer ends before)."""
        self.held: ChannelRecord | None = None
        """The channel as this request last wrote it, while it holds it."""
        self.asked_facilitator = False
        """Whether the facilitator's ``/verify`` was asked (else admitted locally)."""

    async def run(self, facilitator: FacilitatorClient) -> Refusal | None:
        if await self._admitted_on_recent():
            return None
        for _ in range(HOLD_ATTEMPTS):
            decided = await self._admit_on_read(facilitator)
            if not isinstance(decided, HoldLost):
                return decided
        return busy()

    async def _admit_on_read(self, facilitator: FacilitatorClient) -> Refusal | HoldLost | None:
        """Decide on the channel's record as read now, and take the channel; ``HoldLost``
        when the record changed between the read and the compare-and-set (another request
        took the channel, or a claims worker wrote its lease: the next read tells which)."""
        free = await self._free_record()
        if isinstance(free, Refusal):
            return free
        record, payment, now = free, self.payment, time.time()
        stale = record is None or now - record.synced_at > self.scheme.state_ttl
        chain: ChainSnapshot | None = None
        if payment.kind == "deposit" or stale or payment.contract_wallet:
            self.asked_facilitator = True
            verified = await facilitator.verify(self.payload, self.requirements)
            if not verified.is_valid:
                reason = verified.invalid_reason or "payment_invalid"
                return Refusal(reason, verified.invalid_message or reason)
            chain = ChainSnapshot.read(verified.extra)
            if chain is None:
                return Refusal(
                    ERR_VERIFICATION_STATE_UNAVAILABLE,
                    "the facilitator did not report the channel's balance and totalClaimed",
                )
        assert chain is not None or record is not None
        mirror = chain if chain is not None else ChainSnapshot.of(record)  # type: ignore[arg-type]
        refusal = self._refusal(record, mirror)
        if refusal is not None:
            if chain is not None and chain.withdraw_requested_at and record is not None:
                await self._withdrawal_seen(record, chain, now)
            return refusal
        charged = self._baseline(record, mirror)
        changes: dict[str, Any] = {"charged": charged}
        if chain is not None:
            changes.update(chain.mirrored(now))
        if not await self._hold(record, changes):
            return HoldLost()
        if payment.kind == "deposit":
            return await self._deposit(facilitator, mirror)
        return None

    # -- the steps -----------------------------------------------------------------------

    async def _admitted_on_recent(self) -> bool:
        """Take the channel with no store read, when this process is the one serving it: the
        voucher is decided on the record as this process left it, and the compare-and-set
        that takes the channel succeeds only if that record is still the stored one (then
        the decision is the one a read would have given). Anything else (no such record,
        the channel held, the mirror stale, a refusal, a lost compare-and-set) goes the
        usual way, from a read."""
        payment, recent = self.payment, self.scheme.recent
        if payment.kind != "voucher" or payment.contract_wallet:
            return False
        record = recent.trusted(payment.channel_id)
        now = time.time()
        if (
            record is None
            or record.serving is not None
            or now - record.synced_at > self.scheme.state_ttl
        ):
            return False
        mirror = ChainSnapshot.of(record)
        if self._refusal(record, mirror) is not None:
            return False
        if await self._hold(record, {"charged": self._baseline(record, mirror)}):
            return True
        recent.distrust(payment.channel_id)
        return False

    async def _free_record(self) -> ChannelRecord | Refusal | None:
        return await free_record(self.scheme, self.payment.channel_id)

    async def _withdrawal_seen(
        self, record: ChannelRecord, chain: ChainSnapshot, now: float
    ) -> None:
        """Mirror a withdrawal the chain shows (if the record is still as read), and have
        the channel's charges claimed at once."""
        if not record.withdraw_requested_at:
            await self.channels.put(dataclasses.replace(record, **chain.mirrored(now)))
            self.scheme.on_withdrawal(record.channel_id)

    def _baseline(self, record: ChannelRecord | None, mirror: ChainSnapshot) -> int:
        """The charged cumulative this request starts from: ours, or (with no record of the
        channel) what was claimed on chain; never below what was claimed."""
        charged = record.charged if record is not None else 0
        return max(charged, mirror.total_claimed)

    def _refusal(self, record: ChannelRecord | None, mirror: ChainSnapshot) -> Refusal | None:
        """Why this payment cannot be served on the channel as it stands, if it cannot."""
        payment = self.payment
        if mirror.withdraw_requested_at:
            return Refusal(
                CHANNEL_WITHDRAWAL_PENDING,
                "the payer asked to withdraw from this channel: it takes no more vouchers",
            )
        charged = self._baseline(record, mirror)
        if payment.cumulative != charged + self.maximum:
            return self._corrective(record, mirror, charged)
        if payment.kind == "deposit":
            return None  # the facilitator checked the cumulative against balance + deposit
        if payment.cumulative > mirror.balance:
            return Refusal(
                ERR_CUMULATIVE_EXCEEDS_BALANCE,
                f"the voucher's {payment.cumulative} is more than the channel's balance"
                f" {mirror.balance}: deposit more",
            )
        if payment.cumulative <= mirror.total_claimed:
            return Refusal(
                ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED,
                "the voucher is not above what was already claimed on chain",
            )
        return None

    def _corrective(
        self, record: ChannelRecord | None, mirror: ChainSnapshot, charged: int
    ) -> Refusal:
        """The spec's corrective 402: the server's charged cumulative, and its latest voucher
        (which the client checks before it believes the cumulative)."""
        extra: dict[str, Any] = {
            "channelState": channel_state(self.payment.channel_id, mirror, charged)
        }
        if record is not None and record.voucher_signature and record.voucher_max >= charged:
            extra["voucherState"] = {
                "signedMaxClaimable": str(record.voucher_max),
                "signature": record.voucher_signature,
            }
        return Refusal(
            ERR_CUMULATIVE_AMOUNT_MISMATCH,
            f"the voucher must be for {charged + self.maximum}: {charged} charged so far plus"
            f" this request's {self.maximum}",
            extra=extra,
        )

    async def _hold(self, record: ChannelRecord | None, changes: dict[str, Any]) -> bool:
        """Take the channel for this request (compare-and-set): False if another came first."""
        base = record if record is not None else self._new_record()
        held = dataclasses.replace(base, serving=self.key, serving_until=self.until, **changes)
        self.held = await self.channels.put(held)
        self.scheme.recent.wrote(self.held)
        return self.held is not None

    def _new_record(self) -> ChannelRecord:
        config = self.payment.config
        return ChannelRecord(
            channel_id=self.payment.channel_id,
            network=str(self.requirements.network),
            payer=config.payer.lower(),
            payer_authorizer=config.payer_authorizer.lower(),
            receiver=config.receiver.lower(),
            receiver_authorizer=config.receiver_authorizer.lower(),
            token=config.token.lower(),
            withdraw_delay=config.withdraw_delay,
            salt=config.salt.lower(),
        )

    async def _deposit(
        self, facilitator: FacilitatorClient, before: ChainSnapshot
    ) -> Refusal | None:
        """Have the facilitator settle the deposit before anything is served; mirror the
        channel it reports. A deposit that does not land releases the channel."""
        try:
            settled = await facilitator.settle(self.payload, self.requirements)
        except BaseException:
            await self.release()
            raise
        if not settled.success:
            await self.release()
            reason = settled.error_reason or "deposit_failed"
            return Refusal(reason, settled.error_message or reason)
        state = (settled.extra or {}).get("channelState")
        after = ChainSnapshot.read(state if isinstance(state, dict) else None)
        if after is None:  # as the SDK's server does: what was there, and the deposit
            deposit = self.payment.deposit or 0
            after = dataclasses.replace(before, balance=before.balance + deposit)
        logger.info(
            "deposit of %s into channel %s: %s",
            self.payment.deposit,
            self.payment.channel_id,
            settled.transaction,
        )
        if settled.transaction:
            self.scheme.deposits.put(self.key, settled.transaction)
        metrics = self.scheme.metrics
        if metrics is not None:
            network, asset = str(self.requirements.network), self.requirements.asset
            metrics.session_deposit(network, asset, self.payment.deposit or 0)
        await self._update(after.mirrored(time.time()))
        return None

    async def _update(self, changes: dict[str, Any]) -> None:
        """Write ``changes`` to the channel this request holds (no one else writes it)."""
        current = self.held
        while current is not None and current.serving == self.key:
            stored = await self.channels.put(dataclasses.replace(current, **changes))
            self.scheme.recent.wrote(stored)
            if stored is not None:
                self.held = stored
                return
            current = await self.channels.get(self.payment.channel_id)
            self.scheme.recent.read(current)

    async def release(self) -> None:
        """Give the channel up (a request refused or failed after it took it)."""
        with anyio.CancelScope(shield=True):
            await self._update({"serving": None, "serving_until": 0.0})
            self.held = None


async def free_record(
    scheme: BatchSettlementScheme, channel_id: str
) -> ChannelRecord | Refusal | None:
    """The channel's record if no request holds it (None: no record yet), for anything
    that takes a channel (a payment, a refund). A charge this process is making is waited
    for; a holder whose lease ran out still holds the channel while its row waits to be
    charged (a taker would start from a charged cumulative without that answer)."""
    record = await scheme.channels.get(channel_id)
    scheme.recent.read(record)
    if (
        record is not None
        and record.busy(time.time())
        and await scheme.charging.wait(channel_id, CHARGE_WAIT_SECONDS)
    ):
        record = await scheme.channels.get(channel_id)
        scheme.recent.read(record)
    if record is None:
        return None
    if record.busy(time.time()) or await scheme.holder_unsettled(record):
        return busy()
    return record


def busy() -> Refusal:
    return Refusal(
        ERR_CHANNEL_BUSY,
        "the channel is serving another request: a channel serves one request at a time",
    )
