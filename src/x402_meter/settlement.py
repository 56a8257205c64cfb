"""Settling charges after the body closes, from the ledger row alone, in any process.

Every job reads what it needs (payload, the server's requirements, the amount) from its
``PaymentRecord``, and works on a row only while it holds the row's lease, so two workers
never settle the same payment. Outcomes:

- success: ``settled`` with the transaction hash;
- transient (facilitator unreachable or erroring, or ``settlement_pending``: broadcast but
  unconfirmed): the row stays ``to_settle`` with the error and a ``next_attempt_at`` after an
  exponential backoff with jitter; a retry re-sends the identical payload, which the
  facilitator reconciles against the transaction it already sent;
- permanent (the facilitator refused): ``failed``, with its reason kept; when the reason says
  the payer voided its authorization (and no earlier attempt may have reached the chain),
  the payer is refused for ``voided_payer_seconds``.

A retry never waits more than halfway to the authorization's deadline: after it, no
settlement can land.

A sweeper, started on first use and stopped at shutdown, picks up rows that are due: ones
left by retries, ones left ``to_settle`` by a process that stopped, and ``verified`` rows whose
server died mid-stream (their lease ran out), which are charged for their last checkpoint.
Other background workers of a meter (the claims of sessions) start and stop with it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import anyio
from x402.mechanisms.evm.constants import PERMIT2_DEADLINE_BUFFER
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from x402_meter.errors import ChargeUnavailableError, FacilitatorUnavailableError
from x402_meter.errors import LeaseLostError as LeaseLostError
from x402_meter.facilitator import FacilitatorClient
from x402_meter.metrics import MeterMetrics
from x402_meter.store import LedgerState, PaymentRecord, PaymentStore
from x402_meter.voiding import is_voiding, remember_voided_payer

if TYPE_CHECKING:
    from x402_meter.schemes import PaymentScheme

logger = logging.getLogger("x402_meter.settlement")

SETTLEMENT_PENDING: Final = "settlement_pending"
SettlementHook = Callable[[PaymentRecord], Awaitable[None] | None]
ATTEMPT_GRACE: Final = 60.0
"""Added to the lease for one attempt: covers the facilitator client's timeout."""


class BackgroundWorker(Protocol):
    """A worker that runs beside the sweeper: started with it, stopped with it."""

    def ensure_running(self) -> None:
        """Start in the running loop unless already running there (called often)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff between settlement attempts: ``first`` doubling up to ``longest``, with jitter."""

    first: float = 1.0
    longest: float = 60.0
    inline_attempts: int = 3
    """Attempts made right away, in the request's background task, before the sweeper takes over."""
    sweep_every: float = 5.0
    """How often the sweeper looks for due rows."""
    lease_seconds: float = 30.0
    """How long a worker holds a row; a server's heartbeat renews it while it streams."""

    def delay(self, attempts: int) -> float:
        base = min(self.first * float(2 ** max(attempts - 1, 0)), self.longest)
        return base * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not cryptography


def payload_of(record: PaymentRecord) -> PaymentPayload | PaymentPayloadV1:
    if record.x402_version == 1:
        return PaymentPayloadV1.model_validate_json(record.payload_json)
    return PaymentPayload.model_validate_json(record.payload_json)


def settle_requirements_of(record: PaymentRecord) -> PaymentRequirements | PaymentRequirementsV1:
    """The server's requirements with the amount to charge."""
    amount = str(record.amount or 0)
    if record.x402_version == 1:
        v1 = PaymentRequirementsV1.model_validate_json(record.requirements_json)
        return v1.model_copy(update={"max_amount_required": amount})
    v2 = PaymentRequirements.model_validate_json(record.requirements_json)
    return v2.model_copy(update={"amount": amount})


async def settle_by_facilitator(
    record: PaymentRecord, facilitator: FacilitatorClient
) -> SettleResponse:
    """The facilitator's ``/settle`` of a charged row: how ``exact`` and ``upto`` settle."""
    return await facilitator.settle(payload_of(record), settle_requirements_of(record))


def settle_deadline(record: PaymentRecord) -> float | None:
    """The last unix time at which a facilitator still settles the row's authorization.

    The permit's ``deadline`` (``upto``) or ``validBefore`` (``exact``), less the buffer
    facilitators keep; None if the payload does not say.
    """
    try:
        inner = json.loads(record.payload_json).get("payload") or {}
        if "permit2Authorization" in inner:
            expires = int(inner["permit2Authorization"]["deadline"])
        else:
            expires = int(inner["authorization"]["validBefore"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return float(expires - PERMIT2_DEADLINE_BUFFER)


def worker_id() -> str:
    """Names this process in leases: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Settler:
    """Runs settlement jobs and the sweeper; lets callers wait for a payment's outcome."""

    def __init__(
        self,
        facilitator: FacilitatorClient,
        store: PaymentStore,
        *,
        retry: RetryPolicy | None = None,
        on_settled: SettlementHook | None = None,
        on_settlement_failed: SettlementHook | None = None,
        metrics: MeterMetrics | None = None,
        voided_payer_seconds: float = 0.0,
        schemes: Mapping[str, PaymentScheme] | None = None,
    ) -> None:
        """``voided_payer_seconds``: how long a payer whose settlement failed because it
        voided its authorization is refused (0: it is not). ``schemes``: how each row's
        scheme settles a charge (``PaymentScheme.settle_charge``); a row of a scheme not
        named there is settled through the facilitator."""
        self._facilitator = facilitator
        self._schemes: Mapping[str, PaymentScheme] = schemes or {}
        self._voided_for = voided_payer_seconds
        self._metrics = metrics
        self._started: dict[str, float] = {}
        self._store = store
        self.retry = retry or RetryPolicy()
        self.owner = worker_id()
        self._on_settled = on_settled
        self._on_failed = on_settlement_failed
        self._tasks: set[asyncio.Task[object]] = set()
        self._finished: dict[str, asyncio.Event] = {}
        self._serving: set[str] = set()
        """Receipts whose answers this process is serving (``serving`` to ``served``)."""
        self._none_serving: asyncio.Event | None = None
        """Set when the last answer served here is over, while ``aclose`` waits for it."""
        self._sweeper: asyncio.Task[None] | None = None
        self._sweeper_loop: asyncio.AbstractEventLoop | None = None
        self._beside: list[BackgroundWorker] = []

    # -- scheduling --------------------------------------------------------------------

    def _spawn(self, work: Awaitable[object], name: str) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def ensure_sweeper(self) -> None:
        """Start the sweeper in the running loop, once (it also recovers rows at startup),
        and the workers that run beside it."""
        loop = asyncio.get_running_loop()
        if self._sweeper is None or self._sweeper.done() or self._sweeper_loop is not loop:
            self._sweeper = loop.create_task(self._sweep_forever(), name="x402-settlement-sweeper")
            self._sweeper_loop = loop
        for worker in self._beside:
            worker.ensure_running()

    def run_beside(self, worker: BackgroundWorker) -> None:
        """Start ``worker`` with the sweeper and stop it with the sweeper."""
        self._beside.append(worker)

    def expect(self, receipt_id: str) -> None:
        """A payment is being settled: ``wait`` callers may wait for it from now on."""
        self._finished.setdefault(receipt_id, asyncio.Event())

    def serving(self, receipt_id: str) -> None:
        """This process serves the payment's answer from now until ``served``: its sweeper
        leaves the row alone even when its heartbeat is late and its lease has run out (the
        row is not abandoned, only late; recovering it from its checkpoint would settle a
        part of an answer still running and use up its authorization)."""
        self._serving.add(receipt_id)
        self.expect(receipt_id)

    def served(self, receipt_id: str) -> None:
        """The answer is over (charged, or failed): the sweeper may recover its row again."""
        self._serving.discard(receipt_id)
        if not self._serving and self._none_serving is not None:
            self._none_serving.set()

    def submit(self, record: PaymentRecord) -> None:
        """Settle ``record`` (``to_settle``, leased to us) in the background; never blocks."""
        self.expect(record.receipt_id)
        self._spawn(self.settle(record), f"x402-settle-{record.receipt_id}")

    async def wait(self, receipt_id: str, seconds: float) -> bool:
        """Wait, at most ``seconds``, for this process to take the payment to a final state.

        Also catches a settlement that starts here meanwhile (the sweeper resuming the row).
        Returns whether it finished here; another process may finish it too (read the store).
        """
        created = receipt_id not in self._finished
        event = self._finished.setdefault(receipt_id, asyncio.Event())
        with anyio.move_on_after(seconds):
            await event.wait()
        if created and not event.is_set() and self._finished.get(receipt_id) is event:
            self._finished.pop(receipt_id, None)  # only this waiter wanted it: don't keep it
        return event.is_set()

    async def drain(self) -> None:
        """Wait for every settlement job in flight (at shutdown, and in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Shut down: wait for the answers still being served here, then for their
        settlements, then stop the workers beside the sweeper (cancelled at once if the
        caller's time runs out first). A server that shuts down cancels the answers it is
        still sending; each unwinds through its charge (written, its settlement started),
        so waiting for them first is what lets those charges settle before the process
        exits rather than at the next start (the caller bounds the wait, e.g. the
        lifespan's 30 s)."""
        try:
            while self._serving:
                self._none_serving = asyncio.Event()
                await self._none_serving.wait()
            self._none_serving = None
            if self._sweeper is not None:
                self._sweeper.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.gather(self._sweeper, return_exceptions=True)
                self._sweeper = None
            await self.drain()
        finally:
            for worker in self._beside:
                await worker.aclose()

    # -- one payment -------------------------------------------------------------------

    async def settle(self, record: PaymentRecord, *, attempts: int | None = None) -> PaymentRecord:
        """Up to ``attempts`` tries now (default: the policy's inline attempts), then hand over.

        Returns the row as it was left: final, or ``to_settle`` with ``next_attempt_at``.
        """
        event = self._finished.setdefault(record.receipt_id, asyncio.Event())
        if self._metrics is not None and record.receipt_id not in self._started:
            self._metrics.settlement_started()
            self._started[record.receipt_id] = time.monotonic()
        final = True
        try:
            with anyio.CancelScope(shield=True):
                result = await self._settle(record, attempts or self.retry.inline_attempts)
            final = result.state.is_final
            if final and self._metrics is not None:
                started = self._started.pop(record.receipt_id, time.monotonic())
                self._metrics.settlement_finished(result, time.monotonic() - started)
            return result
        finally:
            if final:  # waiters want an outcome; a row handed to the sweeper has none yet
                event.set()
                self._finished.pop(record.receipt_id, None)

    async def _settle(self, record: PaymentRecord, attempts: int) -> PaymentRecord:
        for attempt in range(attempts):
            try:
                record = await self._attempt(record)
            except LeaseLostError:
                logger.info("settlement %s is held by another worker", record.receipt_id)
                return await self._store.get(record.receipt_id) or record
            if record.state.is_final:
                await self._run_hook(record)
                return record
            if attempt + 1 < attempts:
                await anyio.sleep(max(record.next_attempt_at - time.time(), 0))
        # Left for the sweeper: give the lease up so any worker can continue when due.
        return await self._save(record, lease_owner=None, lease_until=0.0)

    async def _attempt(self, record: PaymentRecord) -> PaymentRecord:
        scheme = self._schemes.get(record.scheme)
        if not record.amount and not (scheme is not None and scheme.settles_zero_charges):
            return await self._save(
                record, state=LedgerState.NOT_CHARGED, amount=0, lease_owner=None, lease_until=0.0
            )
        # Hold the row for the whole attempt: a settle call can wait on a busy facilitator for
        # longer than a lease, and a second worker settling the same payment would collide.
        now = time.time()
        held = await self._store.claim(
            record.receipt_id, self.owner, now + self.retry.lease_seconds + ATTEMPT_GRACE, now
        )
        if held is None:
            raise LeaseLostError(record.receipt_id)
        record = held
        attempt = record.attempts + 1
        started = time.perf_counter()
        try:
            if scheme is None:
                result = await settle_by_facilitator(record, self._facilitator)
            else:
                result = await scheme.settle_charge(record, self._facilitator)
        except (FacilitatorUnavailableError, ChargeUnavailableError) as exc:
            return await self._later(record, attempt, str(exc), None)
        if result.success and not record.amount:  # a scheme's charge of nothing, done
            return await self._save(
                record,
                state=LedgerState.NOT_CHARGED,
                amount=0,
                attempts=attempt,
                error=None,
                lease_owner=None,
                lease_until=0.0,
            )
        if result.success:
            logger.info(
                "settled %s amount=%s tx=%s in %.0f ms",
                record.receipt_id,
                record.amount,
                result.transaction,
                (time.perf_counter() - started) * 1000,
            )
            return await self._save(
                record,
                state=LedgerState.SETTLED,
                transaction=result.transaction or None,
                attempts=attempt,
                error=None,
                lease_owner=None,
                lease_until=0.0,
            )
        reason = result.error_reason or "settlement_failed"
        if reason == SETTLEMENT_PENDING:
            return await self._later(record, attempt, reason, result.transaction or None)
        if record.error is None and is_voiding(reason):
            # The first attempt: nothing of ours reached the chain, so the payer voided it.
            await remember_voided_payer(
                self._store,
                record.payer,
                seconds=self._voided_for,
                reason=reason,
                receipt_id=record.receipt_id,
            )
        if record.error is not None:
            # An earlier attempt may have reached the chain (a timeout, a pending result):
            # keep that in the reason so an operator knows to look at the transaction log.
            reason = f"{reason} (after: {record.error})"
        logger.warning("settlement %s refused: %s", record.receipt_id, reason)
        return await self._save(
            record,
            state=LedgerState.FAILED,
            attempts=attempt,
            error=reason,
            lease_owner=None,
            lease_until=0.0,
        )

    async def _later(
        self, record: PaymentRecord, attempt: int, error: str, transaction: str | None
    ) -> PaymentRecord:
        logger.warning("settlement %s attempt %d: %s", record.receipt_id, attempt, error)
        now = time.time()
        next_attempt_at = now + self.retry.delay(attempt)
        deadline = settle_deadline(record)
        if deadline is not None and now < deadline:
            # A backoff past the deadline would lose the payment: wait at most halfway there.
            next_attempt_at = min(next_attempt_at, (now + deadline) / 2)
        return await self._save(
            record,
            attempts=attempt,
            error=error,
            transaction=transaction or record.transaction,
            next_attempt_at=next_attempt_at,
        )

    async def _save(self, record: PaymentRecord, **changes: object) -> PaymentRecord:
        updated = record.replace(updated_at=time.time(), **changes)
        await self._store.save(updated)
        return updated

    async def _run_hook(self, record: PaymentRecord) -> None:
        hook = self._on_settled if record.state is LedgerState.SETTLED else None
        if record.state is LedgerState.FAILED:
            hook = self._on_failed
        if hook is None:
            return
        try:
            outcome = hook(record)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            logger.exception("settlement hook failed for %s", record.receipt_id)

    # -- recovery ----------------------------------------------------------------------

    async def sweep(self, now: float | None = None) -> int:
        """Settle every row that is due (at ``now``); returns how many were taken up."""
        now = time.time() if now is None else now
        taken = 0
        for row in await self._store.due(now):
            if row.state is LedgerState.VERIFIED and row.receipt_id in self._serving:
                continue  # still being served here: late, not abandoned
            claimed = await self._store.claim(
                row.receipt_id, self.owner, now + self.retry.lease_seconds, now
            )
            if claimed is None:
                continue  # another worker got there first
            if claimed.state is LedgerState.VERIFIED:
                # Its server died mid-stream: charge what the last checkpoint says was served.
                logger.warning(
                    "recovering %s from its checkpoint: amount=%s",
                    claimed.receipt_id,
                    claimed.amount,
                )
                claimed = await self._save(
                    claimed, state=LedgerState.TO_SETTLE, amount=claimed.amount or 0
                )
            taken += 1
            self._spawn(self.settle(claimed, attempts=1), f"x402-sweep-{claimed.receipt_id}")
        return taken

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # the store may be briefly unavailable: try again next round
                logger.exception("settlement sweep failed")
            await anyio.sleep(self.retry.sweep_every)
