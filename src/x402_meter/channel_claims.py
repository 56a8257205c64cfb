"""The claims worker of sessions: charged vouchers claimed on chain in batches, then swept.

Each pass takes the channels whose charged cumulative is above what was claimed
(``ChannelStore.claimable``), holds each one's claim with a lease (a compare-and-set on the
record: several workers sharing a store never claim one channel at once), and has the
facilitator claim them, at most ``max_per_batch`` per transaction (``claimWithSignature``;
the ``ClaimBatch`` is signed by the seller's receiver-authorizer key where the channel names
it, else by the facilitator, which holds the key it advertises). Each claim's amount and
transaction are recorded in the channel's record; then the facilitator sweeps what was
claimed to ``payTo`` (``settle``). Passes run every ``interval`` seconds, at once when a
channel's mirror shows a withdrawal requested, and on demand (``wake``).

Nothing is lost and nothing is paid twice: a claim names the channel's charged *cumulative*
(``totalClaimed``), and the contract applies only what is above the cumulative it has
recorded, so a claim sent again (after a restart, an expired lease, a timeout whose
transaction did land) moves nothing more. A facilitator that cannot be reached leaves every
charge where it was, and the pass is retried with a backoff. A batch the contract refuses
is split in halves until the refused channel is alone; that channel backs off and its
charge stays to claim.

The rule that keeps charges ahead of withdrawals: a payer's timed withdrawal finishes
``withdraw_delay`` seconds after it is requested, and takes only what is unclaimed then. A
voucher is admitted only on a mirror of the channel at most ``state_ttl`` old that shows no
withdrawal, and its answer ends within ``max_timeout_seconds``; a pass every ``interval``
claims its charge. ``MeterConfig`` checks ``interval <= (withdraw_delay - state_ttl -
max_timeout_seconds) / 2``: the charge is on chain before any withdrawal requested after
that mirror was read can take it, with half the window left for the claim transaction
and facilitator outages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.authorizer_signer import sign_claim_batch
from x402.mechanisms.evm.batch_settlement.errors import (
    ERR_AUTHORIZER_NOT_CONFIGURED,
    ERR_CLAIM_TRANSACTION_FAILED,
    ERR_NOTHING_TO_SETTLE,
    ERR_RPC_READ_FAILED,
    ERR_SETTLE_TRANSACTION_FAILED,
)
from x402.mechanisms.evm.batch_settlement.server.channel_manager_common import (
    build_claim_payment_payload,
    build_payment_requirements,
    build_settle_payment_payload,
)
from x402.mechanisms.evm.batch_settlement.types import (
    AuthorizerSigner,
    VoucherClaim,
)
from x402.schemas import SettleResponse

from x402_meter.errors import FacilitatorUnavailableError
from x402_meter.facilitator import FacilitatorClient
from x402_meter.metrics import SessionMetrics
from x402_meter.schemes.channel_state import checksummed_config
from x402_meter.settlement import SETTLEMENT_PENDING, worker_id
from x402_meter.store import ChannelRecord, ChannelStore, ClaimedChannel, ClaimRecord

logger = logging.getLogger("x402_meter.claims")

MAX_CLAIMS_PER_TRANSACTION: Final = 128
"""What the batch-settlement contract takes in one claim (the SDK's channel manager sends 100)."""
TRANSIENT_REASONS: Final = frozenset(
    {
        ERR_CLAIM_TRANSACTION_FAILED,
        ERR_SETTLE_TRANSACTION_FAILED,
        ERR_AUTHORIZER_NOT_CONFIGURED,
        ERR_RPC_READ_FAILED,
        SETTLEMENT_PENDING,
    }
)
"""Facilitator refusals that say nothing about the claims themselves: the pass is retried."""
NO_VOUCHER: Final = "no_voucher_covers_the_charge"
CLOSE_SECONDS: Final = 30.0
"""How long shutting down waits for a pass in flight before it cancels it."""
WRITE_ATTEMPTS: Final = 5
FACILITATOR_UNAVAILABLE: Final = "facilitator_unavailable"
UNCLAIMED_COUNTED: Final = 10_000
"""Channels read to report the unclaimed amount after a pass (a bound on its cost)."""
RESUMED_SWEEP_SCAN: Final = 1000
"""A worker's first pass sweeps the payees of the claimed channels among this many most
recently written: a sweep that failed before a restart is not left for the payee's next
claim (a sweep with nothing to move costs a read, no transaction)."""
PAGE: Final = 100


@dataclass(frozen=True, slots=True)
class ClaimPolicy:
    """How often and how much the worker claims, and how it backs off."""

    interval: float = 60.0
    """Seconds between passes (a withdrawal seen, or ``wake``, starts one at once)."""
    max_per_batch: int = 100
    """Channels per claim transaction (the contract takes at most 128)."""
    lease_seconds: float = 120.0
    """How long a worker holds the claims it sends: longer than a claim takes to land."""
    retry_first: float = 5.0
    """The first wait after a failed pass or a refused channel, doubling each time..."""
    retry_longest: float = 900.0
    """...up to this for a refused channel; a failed pass waits at most ``interval``."""

    def __post_init__(self) -> None:
        if not self.interval > 0 or not self.lease_seconds > 0 or not self.retry_first > 0:
            raise ValueError("interval, lease_seconds and retry_first must be > 0 seconds")
        if not 1 <= self.max_per_batch <= MAX_CLAIMS_PER_TRANSACTION:
            raise ValueError(f"max_per_batch must be 1..{MAX_CLAIMS_PER_TRANSACTION}")

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row (1 or more)."""
        return min(self.retry_first * 2.0 ** max(failures - 1, 0), self.retry_longest)


@dataclass(frozen=True, slots=True)
class Payee:
    """Where claimed funds are swept: a receiver's balance of one token on one network."""

    network: str
    receiver: str
    token: str

    @classmethod
    def of(cls, record: ChannelRecord) -> Payee:
        return cls(record.network, record.receiver.lower(), record.token.lower())


@dataclass(frozen=True, slots=True)
class Claim:
    """One claim transaction: the cumulative it recorded for each channel."""

    transaction: str
    totals: dict[str, int]
    """Channel id -> the ``totalClaimed`` sent."""


@dataclass(slots=True)
class ClaimsPass:
    """What one pass did."""

    claims: list[Claim] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)
    """The sweep transactions."""
    refused: dict[str, str] = field(default_factory=dict)
    """Channel id -> why its claim was refused (it backs off; its charge stays)."""
    interrupted: str | None = None
    """Why the pass stopped early (the facilitator unreachable...): retried after a backoff."""

    def going(self) -> bool:
        """Whether the pass goes on (nothing interrupted it)."""
        return self.interrupted is None


class ChannelClaims:
    """Claims the charged vouchers of one channel store, in batches, in the background."""

    def __init__(
        self,
        channels: ChannelStore,
        facilitator: FacilitatorClient,
        *,
        policy: ClaimPolicy | None = None,
        authorizer: AuthorizerSigner | None = None,
        owner: str | None = None,
        metrics: SessionMetrics | None = None,
    ) -> None:
        """``authorizer``: the seller's receiver-authorizer key, which signs the claims of
        the channels that name its address (the facilitator signs the others); ``metrics``
        is told each claim, failure and sweep, and after each pass what is left to claim."""
        self.channels = channels
        self.facilitator = facilitator
        self.policy = policy or ClaimPolicy()
        self.authorizer = authorizer
        self.owner = owner or worker_id()
        """Names this worker in the claim leases it holds."""
        self.metrics = metrics
        self._unclaimed_seen: set[tuple[str, str]] = set()
        """The (network, token) pairs whose unclaimed amount was reported (set to 0 when
        nothing is left of one)."""
        self._unswept: set[Payee] = set()
        """Payees whose claimed funds wait for a sweep (one failed, or a pass stopped)."""
        self._resumed = False
        """Whether the payees that a previous run may have left unswept were taken up."""
        self._task: asyncio.Task[None] | None = None
        self._task_loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._waiting: list[asyncio.Future[ClaimsPass]] = []
        """Callers of ``next_pass``, told by the first pass that starts after their call."""

    # -- running -------------------------------------------------------------------------

    def ensure_running(self) -> None:
        """Start the passes in the running loop, once (the first one at once: it claims
        what a previous run left)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task_loop is not loop:
            self._stopping = False
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run_forever(), name="x402-channel-claims")
            self._task_loop = loop

    def running(self) -> bool:
        """Whether the passes run (started, not stopped)."""
        return self._task is not None and not self._task.done()

    def wake(self, channel_id: str | None = None) -> None:
        """Run a pass now (a withdrawal was seen on ``channel_id``, or someone asks)."""
        if channel_id is not None:
            logger.info("claiming now: channel %s", channel_id)
        if self._wake is not None:
            self._wake.set()

    def claimed_by_refund(self, record: ChannelRecord) -> None:
        """A cooperative refund claimed ``record``'s charges in its own transaction: a pass
        now sweeps them to ``payTo`` (the next pass sweeps them if none runs now)."""
        self._unswept.add(Payee.of(record))
        self.wake()

    def next_pass(self) -> asyncio.Future[ClaimsPass]:
        """What the worker's next pass does: one that starts after this call (await it;
        cancelled if the worker stops first)."""
        waiter: asyncio.Future[ClaimsPass] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        return waiter

    async def claim_now(self) -> ClaimsPass:
        """Run a pass now and say what it did: in the worker's loop if it runs (never two
        passes at once in one worker), else here."""
        if not self.running():
            return await self.claim_once()
        waiter = self.next_pass()
        self.wake()
        return await waiter

    async def aclose(self) -> None:
        """Stop: a pass in flight may finish (up to ``CLOSE_SECONDS``), then is cancelled."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self.wake()
        try:
            with anyio.move_on_after(CLOSE_SECONDS):
                await asyncio.shield(task)
        finally:
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(task, return_exceptions=True)
            _cancel(self._waiting)
            self._waiting = []

    async def _run_forever(self) -> None:
        failures = 0
        wake = self._wake
        assert wake is not None
        while not self._stopping:
            wake.clear()
            waiting, self._waiting = self._waiting, []
            try:
                report = await self.claim_once()
            except Exception as exc:  # the store may be briefly unavailable: try again later
                logger.exception("channel claims pass failed")
                report = ClaimsPass(interrupted=f"{type(exc).__name__}: {exc}")
            except BaseException:  # stopped mid-pass: its waiters learn nothing
                _cancel(waiting)
                raise
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_result(report)
            wait = self.policy.interval
            failures = failures + 1 if report.interrupted else 0
            if failures:
                wait = min(self.policy.backoff(failures), wait)
                logger.warning(
                    "channel claims stopped (%s): next pass in %.0f s", report.interrupted, wait
                )
            with anyio.move_on_after(wait):
                await wake.wait()

    # -- one pass ------------------------------------------------------------------------

    async def claim_once(self, now: float | None = None) -> ClaimsPass:
        """Claim every claimable channel (as of ``now``), then sweep what was claimed."""
        now = time.time() if now is None else now
        report = ClaimsPass()
        if not self._resumed:
            self._unswept |= await self._claimed_payees()
            self._resumed = True
        done: set[str] = set()
        while report.going():
            # Channels claimed in this pass come back when charged again meanwhile: they
            # wait for the next pass, so a busy channel costs one claim per pass.
            candidates = [
                record
                for record in await self.channels.claimable(
                    now, limit=self.policy.max_per_batch + len(done)
                )
                if record.channel_id not in done
            ][: self.policy.max_per_batch]
            if not candidates:
                break
            held = [r for r in [await self._hold(r, now) for r in candidates] if r is not None]
            done.update(r.channel_id for r in candidates)
            for batch in _batches(held, self.policy.max_per_batch):
                if report.going():
                    await self._claim(batch, now, report)
                else:
                    await self._release(batch)
        await self._sweep(report)
        if self.metrics is not None:
            await self._report_unclaimed(self.metrics)
        return report

    async def _report_unclaimed(self, metrics: SessionMetrics) -> None:
        """Tell ``metrics`` what the store holds charged and not claimed, per token: every
        channel charged beyond its claims, held or backed off or not (``claimable`` at the
        end of time lists them all), up to ``UNCLAIMED_COUNTED`` channels."""
        unclaimed: dict[tuple[str, str], int] = dict.fromkeys(self._unclaimed_seen, 0)
        for record in await self.channels.claimable(math.inf, limit=UNCLAIMED_COUNTED):
            key = (record.network, record.token)
            unclaimed[key] = unclaimed.get(key, 0) + record.charged - record.claimed
        for (network, token), amount in unclaimed.items():
            metrics.session_unclaimed(network, Web3.to_checksum_address(token), amount)
        self._unclaimed_seen = set(unclaimed)

    async def _claimed_payees(self) -> set[Payee]:
        """The payees of channels claimed before this worker ran (among the most recently
        written, ``RESUMED_SWEEP_SCAN``): a sweep of theirs may have failed, and the set of
        payees to sweep is kept in memory only."""
        payees: set[Payee] = set()
        for offset in range(0, RESUMED_SWEEP_SCAN, PAGE):
            page = await self.channels.list(limit=PAGE, offset=offset)
            payees.update(Payee.of(record) for record in page if record.claimed > 0)
            if len(page) < PAGE:
                break
        return payees

    async def _hold(self, record: ChannelRecord, now: float) -> ChannelRecord | None:
        """Take the channel's claim for this worker (None: nothing to send, or another
        worker holds it)."""
        for _ in range(WRITE_ATTEMPTS):
            if record.charged <= record.total_claimed:  # the chain has it already
                on_chain = functools.partial(_claimed_changes, total=record.charged)
                await self._update(record.channel_id, on_chain)
                return None
            if not record.voucher_signature or record.voucher_max < record.charged:
                logger.error(
                    "channel %s: no voucher covers its charge %s",
                    record.channel_id,
                    record.charged,
                )
                self._failed(NO_VOUCHER, 1)
                await self._refuse(record, now, NO_VOUCHER)
                return None
            held = await self.channels.put(
                dataclasses.replace(
                    record, claiming=self.owner, claiming_until=now + self.policy.lease_seconds
                )
            )
            if held is not None:
                return held
            current = await self.channels.get(record.channel_id)  # charged meanwhile?
            if current is None or not current.claimable(now):
                return None
            record = current
        return None

    async def _claim(self, batch: list[ChannelRecord], now: float, report: ClaimsPass) -> None:
        """Have the facilitator claim ``batch`` (held, one payee, one receiver authorizer)."""
        try:
            answer = await self._send_claim(batch)
        except FacilitatorUnavailableError as exc:
            report.interrupted = str(exc)
            self._failed(FACILITATOR_UNAVAILABLE, len(batch))
            await self._release(batch)
            return
        if answer.success:
            claim = Claim(answer.transaction, {r.channel_id: r.charged for r in batch})
            report.claims.append(claim)
            self._unswept.add(Payee.of(batch[0]))
            logger.info("claimed %d channels: %s", len(batch), answer.transaction)
            for record in batch:
                landed = functools.partial(
                    _claimed_changes,
                    total=record.charged,
                    transaction=answer.transaction,
                    owner=self.owner,
                )
                await self._update(record.channel_id, landed)
            await self._log_claim(answer.transaction, batch)
            return
        reason = answer.error_reason or "claim_failed"
        # A refused batch of several is split below: only the channel found alone counts.
        self._failed(reason, len(batch) if reason in TRANSIENT_REASONS or len(batch) == 1 else 0)
        if reason in TRANSIENT_REASONS:
            report.interrupted = f"{reason}: {answer.error_message or ''}"
            await self._release(batch)
        elif len(batch) > 1:  # one channel spoils the batch: find it, claim the others
            half = len(batch) // 2
            await self._claim(batch[:half], now, report)
            if report.going():
                await self._claim(batch[half:], now, report)
            else:
                await self._release(batch[half:])
        else:
            report.refused[batch[0].channel_id] = reason
            logger.warning(
                "claim of channel %s refused: %s %s",
                batch[0].channel_id,
                reason,
                answer.error_message or "",
            )
            await self._refuse(batch[0], now, reason)

    async def _log_claim(self, transaction: str, batch: list[ChannelRecord]) -> None:
        """Log the claim in the store (which transaction claimed what), and count it."""
        first = batch[0]
        claim = ClaimRecord(
            transaction=transaction,
            network=first.network,
            receiver=first.receiver,
            token=first.token,
            channels=tuple(
                ClaimedChannel(r.channel_id, r.charged - max(r.claimed, r.total_claimed), r.charged)
                for r in batch
            ),
            claimed_at=time.time(),
        )
        await self.channels.add_claim(claim)
        if self.metrics is not None:
            token = Web3.to_checksum_address(first.token)  # as the ledger's rows name it
            self.metrics.session_claim(first.network, token, len(batch), claim.amount)

    def _failed(self, reason: str, channels: int) -> None:
        if self.metrics is not None and channels:
            self.metrics.session_claim_failed(reason, channels)

    async def _send_claim(self, batch: list[ChannelRecord]) -> SettleResponse:
        first = batch[0]
        claims = [_voucher_claim(record) for record in batch]
        requirements = build_payment_requirements(
            Web3.to_checksum_address(first.receiver),
            Web3.to_checksum_address(first.token),
            first.network,
        )
        authorizer = self.authorizer
        signature = (
            sign_claim_batch(authorizer, claims, first.network)
            if authorizer is not None
            and authorizer.address.lower() == first.receiver_authorizer.lower()
            else None  # the facilitator signs with the receiver authorizer it advertises
        )
        payload = build_claim_payment_payload(claims, requirements, signature)
        return await self.facilitator.settle(payload, requirements)

    async def _sweep(self, report: ClaimsPass) -> None:
        """Move what was claimed to each payee (``settle``); a failed sweep waits for the
        next pass (the claimed funds are the receiver's in the contract meanwhile)."""
        for payee in sorted(self._unswept, key=lambda p: (p.network, p.receiver, p.token)):
            receiver = Web3.to_checksum_address(payee.receiver)
            token = Web3.to_checksum_address(payee.token)
            requirements = build_payment_requirements(receiver, token, payee.network)
            payload = build_settle_payment_payload(requirements, receiver, token)
            try:
                answer = await self.facilitator.settle(payload, requirements)
            except FacilitatorUnavailableError as exc:
                report.interrupted = report.interrupted or str(exc)
                return
            if answer.success:
                report.sweeps.append(answer.transaction)
                logger.info("swept claims to %s: %s", receiver, answer.transaction)
                if self.metrics is not None:
                    self.metrics.session_sweep(payee.network, token)
            elif answer.error_reason != ERR_NOTHING_TO_SETTLE:
                report.interrupted = report.interrupted or f"sweep: {answer.error_reason}"
                continue
            self._unswept.discard(payee)

    # -- records ---------------------------------------------------------------------------

    async def _refuse(self, record: ChannelRecord, now: float, reason: str) -> None:
        """The channel's claim was refused: it backs off (its charge stays to claim)."""

        def refused(current: ChannelRecord) -> dict[str, Any]:
            failures = current.claim_failures + 1
            return {
                "claiming": None,
                "claiming_until": now + self.policy.backoff(failures),
                "claim_failures": failures,
                "claim_error": reason,
            }

        await self._update(record.channel_id, refused)

    async def _release(self, batch: Iterable[ChannelRecord]) -> None:
        """Give up claims this worker holds and did not send (or that did not land)."""
        for record in batch:
            await self._update(
                record.channel_id,
                lambda r: (
                    {"claiming": None, "claiming_until": 0.0} if r.claiming == self.owner else None
                ),
            )

    async def _update(
        self, channel_id: str, change: Callable[[ChannelRecord], dict[str, Any] | None]
    ) -> None:
        """Apply ``change`` (None: nothing to do) to the channel as it is now, by
        compare-and-set; a charge written meanwhile makes it read again."""
        for _ in range(WRITE_ATTEMPTS):
            current = await self.channels.get(channel_id)
            changes = None if current is None else change(current)
            if current is None or changes is None:
                return
            if await self.channels.put(dataclasses.replace(current, **changes)) is not None:
                return
        logger.warning(
            "channel %s kept changing: its claim record waits for a later pass", channel_id
        )


def _cancel(waiters: Iterable[asyncio.Future[ClaimsPass]]) -> None:
    for waiter in waiters:
        waiter.cancel()


def _claimed_changes(
    current: ChannelRecord, total: int, transaction: str | None = None, owner: str | None = None
) -> dict[str, Any]:
    """A channel's record once ``total`` is claimed on chain (by ``transaction``): never
    lowered by a claim that lands after a larger one."""
    changes: dict[str, Any] = {
        "claimed": max(current.claimed, total),
        "total_claimed": max(current.total_claimed, total),
        "claim_failures": 0,
        "claim_error": None,
    }
    if transaction is not None and total >= current.claimed:
        changes["claim_transaction"] = transaction
    if owner is not None and current.claiming == owner:
        changes.update(claiming=None, claiming_until=0.0)
    return changes


def _voucher_claim(record: ChannelRecord) -> VoucherClaim:
    """The claim row of a channel: its latest voucher, claiming its charged cumulative."""
    return VoucherClaim(
        channel=checksummed_config(record),
        max_claimable_amount=str(record.voucher_max),
        signature=record.voucher_signature,
        total_claimed=str(record.charged),
    )


def _batches(records: list[ChannelRecord], size: int) -> list[list[ChannelRecord]]:
    """``records`` in batches of at most ``size`` that one claim can carry: one payee and
    one receiver authorizer each (``claimWithSignature`` takes one authorizer's signature)."""
    groups: dict[tuple[Payee, str], list[ChannelRecord]] = {}
    for record in records:
        groups.setdefault((Payee.of(record), record.receiver_authorizer.lower()), []).append(record)
    return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]


__all__ = ["ChannelClaims", "Claim", "ClaimPolicy", "ClaimsPass", "Payee"]
