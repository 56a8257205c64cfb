"""Settling charges after the body closes, in the background, from the ledger row alone.

Each job reads everything it needs (payload, the server's requirements, the amount) from
its ``PaymentRecord``, so a worker that starts after a crash can finish what another began.
Transient failures (facilitator unreachable, ``settlement_pending``) are retried with
exponential backoff and jitter; when the retries run out the row stays ``to_settle`` with
the last error, and is never dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from typing import Final

import anyio
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from x402_meter.errors import FacilitatorUnavailableError
from x402_meter.facilitator import FacilitatorClient
from x402_meter.store import LedgerState, PaymentRecord, PaymentStore

logger = logging.getLogger("x402_meter.settlement")

SETTLEMENT_PENDING: Final = "settlement_pending"


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


class Settler:
    """Runs settlement jobs as background tasks and lets callers wait for their outcome."""

    def __init__(
        self,
        facilitator: FacilitatorClient,
        store: PaymentStore,
        *,
        max_attempts: int = 6,
        first_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self._facilitator = facilitator
        self._store = store
        self._max_attempts = max_attempts
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._tasks: set[asyncio.Task[PaymentRecord]] = set()
        self._finished: dict[str, asyncio.Event] = {}

    def expect(self, receipt_id: str) -> None:
        """A payment is being served: let ``wait`` callers wait from now on."""
        self._finished.setdefault(receipt_id, asyncio.Event())

    def submit(self, record: PaymentRecord) -> None:
        """Settle ``record`` (state ``to_settle``) in the background; never blocks the caller."""
        self._finished.setdefault(record.receipt_id, asyncio.Event())
        task = asyncio.create_task(self.settle(record), name=f"x402-settle-{record.receipt_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(
        self, record: PaymentRecord, *, max_attempts: int | None = None
    ) -> PaymentRecord:
        """Take ``record`` to a final state (or leave it ``to_settle`` after the retries)."""
        event = self._finished.setdefault(record.receipt_id, asyncio.Event())
        try:
            with anyio.CancelScope(shield=True):
                settled = await self._settle(record, max_attempts or self._max_attempts)
            return settled  # noqa: RET504 - a CancelScope may swallow exceptions, says mypy
        finally:
            event.set()
            self._finished.pop(record.receipt_id, None)

    async def _settle(self, record: PaymentRecord, max_attempts: int) -> PaymentRecord:
        if not record.amount:
            return await self._save(record, state=LedgerState.NOT_CHARGED, amount=0)
        backoff = self._first_backoff
        last_attempt = record.attempts + max_attempts
        for attempt in range(record.attempts + 1, last_attempt + 1):
            started = time.perf_counter()
            try:
                result = await self._facilitator.settle(
                    payload_of(record), settle_requirements_of(record)
                )
            except FacilitatorUnavailableError as exc:
                record = await self._save(record, attempts=attempt, error=str(exc))
            else:
                record = await self._outcome(record, result, attempt)
                if record.state.is_final:
                    logger.info(
                        "settlement %s %s amount=%s tx=%s in %.0f ms",
                        record.receipt_id,
                        record.state.value,
                        record.amount,
                        record.transaction,
                        (time.perf_counter() - started) * 1000,
                    )
                    return record
            if attempt == last_attempt:
                break
            await anyio.sleep(backoff * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not crypto
            backoff = min(backoff * 2, self._max_backoff)
        logger.warning(
            "settlement %s still pending after retries: %s", record.receipt_id, record.error
        )
        return record

    async def _outcome(
        self, record: PaymentRecord, result: SettleResponse, attempt: int
    ) -> PaymentRecord:
        if result.success:
            return await self._save(
                record,
                state=LedgerState.SETTLED,
                transaction=result.transaction or None,
                attempts=attempt,
                error=None,
            )
        reason = result.error_reason or "settlement_failed"
        if reason == SETTLEMENT_PENDING:
            # Broadcast but unconfirmed: retrying the same payload reconciles, never re-sends.
            return await self._save(
                record, attempts=attempt, error=reason, transaction=result.transaction or None
            )
        return await self._save(record, state=LedgerState.FAILED, attempts=attempt, error=reason)

    async def _save(self, record: PaymentRecord, **changes: object) -> PaymentRecord:
        updated = dataclasses.replace(record, updated_at=time.time(), **changes)  # type: ignore[arg-type]
        await self._store.save(updated)
        return updated

    async def wait(self, receipt_id: str, seconds: float) -> None:
        """Wait until an in-flight settlement in this process finishes, at most ``seconds``."""
        event = self._finished.get(receipt_id)
        if event is not None:
            with anyio.move_on_after(seconds):
                await event.wait()

    async def drain(self) -> None:
        """Wait for every settlement in flight (at shutdown, and in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
