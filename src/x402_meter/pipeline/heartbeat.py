"""The heartbeat of an answer being served: checkpoints, re-checks, and the deadline.

It checkpoints the running count every ``checkpoint_every`` seconds and keeps the row
leased while the answer runs, even when no chunk moves (at least every third of the lease).
If this server dies, the lease runs out and another worker settles the row for its last
checkpoint: what had been served then (never more than was served). A timer, not a task
sleeping in a loop, nor a clock read per chunk: most answers end before it ever fires, and a
timer costs a fraction of a task to start and to stop. (``checkpoint_every=0`` checkpoints
before each chunk, in the response tap.)

While an answer streams, the payer can still make its authorization unsettleable
(invalidate the nonce, move the funds, revoke the approval). Every ``recheck_every``
seconds the heartbeat has the scheme check the payment again (the facilitator's verify), in
a task of its own so that a slow facilitator never delays a checkpoint or the lease. Once
the answer is no longer going to be paid (or the facilitator has not answered twice in a
row, or the deadline is near) it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

import anyio

from x402_meter.errors import FacilitatorUnavailableError
from x402_meter.facilitator import FacilitatorClient
from x402_meter.pipeline.admission import Admitted
from x402_meter.voiding import PAYER_VOIDED, is_voiding

logger = logging.getLogger("x402_meter")

RECHECK_MISSES_TOLERATED: Final = 1
"""Re-checks in a row that may go unanswered (facilitator down or slower than
``recheck_every``) before the answer ends: one blip is tolerated, an outage is not."""


class Heartbeat:
    """Beats while one answer is served; ends it (``end``) when it would no longer be paid."""

    def __init__(
        self,
        admitted: Admitted,
        facilitator: FacilitatorClient,
        *,
        beat_every: float,
        recheck_every: float,
        expiry_margin: float,
        checkpoint: Callable[[], Awaitable[None]],
        end: Callable[[], None],
        label: str,
    ) -> None:
        self.admitted = admitted
        self.facilitator = facilitator
        self.beat_every = beat_every
        """Seconds between heartbeats."""
        self.recheck_every = recheck_every
        self.end_at = admitted.authorization.expires_at - expiry_margin
        """Unix time at which the answer ends, early enough for its settlement to land."""
        self.checkpoint = checkpoint
        self.end = end
        """Ends the answer now (the response tap refuses further chunks, the app is
        cancelled)."""
        self.label = label
        """Names the request in logs (its receipt id)."""
        self.serving = False
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.recheck_at = float("inf")
        """``time.monotonic()`` at which the authorization is re-checked next."""
        self.recheck_task: asyncio.Task[None] | None = None
        self.recheck_misses = 0
        self.stopped: str | None = None
        """Why the answer was ended early: ``payer_voided``, ``payment_invalid``,
        ``authorization_expiring`` or ``facilitator_unavailable``."""
        self.voided: str | None = None
        """The facilitator's reason, when a re-check found that the payer voided it."""

    def start(self) -> None:
        self.serving = True
        if self.recheck_every:
            self.recheck_at = time.monotonic() + self.recheck_every
        self._arm()

    async def stop(self) -> None:
        """No more beats; cancels a checkpoint or re-check in flight and waits for it."""
        self.serving = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        tasks = [t for t in (self.task, self.recheck_task) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _arm(self) -> None:
        # While a re-check is in flight the next one is not due (it starts at a later beat).
        recheck = self.recheck_at if self.recheck_task is None else float("inf")
        delay = min(self.beat_every, self.end_at - time.time(), recheck - time.monotonic())
        self.timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._beat)

    def _beat(self) -> None:
        self.timer = None
        if self.serving:
            self.task = asyncio.ensure_future(self._heartbeat())

    async def _heartbeat(self) -> None:
        if time.time() >= self.end_at:  # settle while the authorization can still be settled
            self.end_early("authorization_expiring")
            return
        if self.recheck_task is None and time.monotonic() >= self.recheck_at:
            self.recheck_at = time.monotonic() + self.recheck_every
            self.recheck_task = asyncio.ensure_future(self._recheck())
        await self.checkpoint()  # if it fails, the heartbeat stops (and the lease runs out)
        if self.serving:
            self._arm()

    async def _recheck(self) -> None:
        """Check the payment again; end the answer if it would no longer settle."""
        admitted = self.admitted
        try:
            with anyio.fail_after(self.recheck_every):
                refusal = await admitted.scheme.recheck(admitted.authorization, self.facilitator)
        except (FacilitatorUnavailableError, TimeoutError) as exc:
            self.recheck_misses += 1
            logger.warning("re-check of %s got no answer: %s", self.label, exc)
            if self.recheck_misses > RECHECK_MISSES_TOLERATED:
                self.end_early("facilitator_unavailable")
            return
        finally:
            self.recheck_task = None
        self.recheck_misses = 0
        if refusal is not None:
            if is_voiding(refusal.reason):
                self.voided = refusal.reason
            self.end_early(PAYER_VOIDED if self.voided else "payment_invalid", refusal.reason)

    def end_early(self, reason: str, detail: str | None = None) -> None:
        """End the answer now; the exchange then charges what was served and settles it."""
        if self.stopped is not None or not self.serving:
            return
        self.stopped = reason
        self.end()
        logger.warning("ended %s early: %s", self.label, detail or reason)
