"""The heartbeat of an answer being served: checkpoints, re-checks, and the deadline.

It checkpoints the running count every ``checkpoint_every`` seconds and keeps the row
leased while the answer runs, even when no chunk moves (at least every third of the lease).
If this server dies, the lease runs out and another worker settles the row for its last
checkpoint: what had been served then (never more than was served). A timer, not a task
sleeping in a loop, nor a clock read per chunk: most answers end before it ever fires, and a
timer costs a fraction of a task to start and to stop. (``checkpoint_every=0`` checkpoints
before each chunk, in the response tap.)

While an answer streams, the payer can still make its authorization unsettleable
(invalidate the nonce, move the funds, revoke the approval). Once ``recheck_every`` seconds
have passed, the heartbeat starts the re-checks: a task of its own (a slow facilitator never
delays a checkpoint or the lease) that has the scheme check the payment again (the
facilitator's verify), one re-check at a time, and starts the next ``recheck_every`` after
the last one's answer, less a random part of up to a quarter (streams opened together do not
re-check together). So a slow facilitator is asked less often, not more: re-checks never
pile up. A re-check may take ``recheck_timeout`` to answer. The answer ends at once when a
re-check finds that it would no longer be paid; when the facilitator is down (no connection,
an error, no answer within ``recheck_timeout``) twice in a row; or when the deadline is near.
"""

from __future__ import annotations

import asyncio
import logging
import random
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
"""Re-checks in a row that may go unanswered (the facilitator unreachable, answering with
an error, or not within ``recheck_timeout``) before the answer ends: one blip is tolerated,
an outage is not."""
RECHECK_JITTER: Final = 0.25
"""The wait before a re-check is ``recheck_every`` less a random part of up to this share of
it: never longer (the bound on a voiding payer holds), and streams that started together
drift apart instead of re-checking in lockstep."""


class Heartbeat:
    """Beats while one answer is served; ends it (``end``) when it would no longer be paid."""

    def __init__(
        self,
        admitted: Admitted,
        facilitator: FacilitatorClient,
        *,
        beat_every: float,
        recheck_every: float,
        recheck_timeout: float,
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
        self.recheck_timeout = recheck_timeout
        """Seconds a re-check may take to answer before it counts as a miss."""
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
        """``time.monotonic()`` at which the re-checks start (then they keep their own time)."""
        self.recheck_task: asyncio.Task[None] | None = None
        """The re-checks, one after another, until the answer ends."""
        self.recheck_misses = 0
        self.stopped: str | None = None
        """Why the answer was ended early: ``payer_voided``, ``payment_invalid``,
        ``authorization_expiring`` or ``facilitator_unavailable``."""

    def start(self) -> None:
        self.serving = True
        if self.recheck_every:
            self.recheck_at = time.monotonic() + recheck_wait(self.recheck_every)
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
        delay = min(self.beat_every, self.end_at - time.time(), self.recheck_at - time.monotonic())
        self.timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._beat)

    def _beat(self) -> None:
        self.timer = None
        if self.serving:
            self.task = asyncio.ensure_future(self._heartbeat())

    async def _heartbeat(self) -> None:
        if time.time() >= self.end_at:  # settle while the authorization can still be settled
            self.end_early("authorization_expiring")
            return
        if time.monotonic() >= self.recheck_at:  # from now on the re-checks keep their own time
            self.recheck_at = float("inf")
            self.recheck_task = asyncio.ensure_future(self._rechecks())
        await self.checkpoint()  # if it fails, the heartbeat stops (and the lease runs out)
        if self.serving:
            self._arm()

    async def _rechecks(self) -> None:
        """Re-check the payment, one re-check at a time, until the answer ends."""
        while self.stopped is None:
            if not await self._recheck():
                return
            await asyncio.sleep(recheck_wait(self.recheck_every))

    async def _recheck(self) -> bool:
        """Check the payment again; end the answer if it would no longer settle. ``False``:
        the answer was ended."""
        admitted = self.admitted
        try:
            with anyio.fail_after(self.recheck_timeout):
                refusal = await admitted.scheme.recheck(admitted.authorization, self.facilitator)
        except (FacilitatorUnavailableError, TimeoutError) as exc:
            self.recheck_misses += 1
            detail = str(exc) or f"no answer within {self.recheck_timeout:g} s"
            logger.warning("re-check of %s got no answer: %s", self.label, detail)
            if self.recheck_misses > RECHECK_MISSES_TOLERATED:
                self.end_early("facilitator_unavailable")
                return False
            return True
        self.recheck_misses = 0
        if refusal is not None:
            stop = PAYER_VOIDED if is_voiding(refusal.reason) else "payment_invalid"
            self.end_early(stop, refusal.reason)
            return False
        return True

    def end_early(self, reason: str, detail: str | None = None) -> None:
        """End the answer now; the exchange then charges what was served and settles it."""
        if self.stopped is not None or not self.serving:
            return
        self.stopped = reason
        self.end()
        logger.warning("ended %s early: %s", self.label, detail or reason)


def recheck_wait(recheck_every: float) -> float:
    """Seconds before the next re-check: ``recheck_every`` less a random part of up to
    ``RECHECK_JITTER`` of it."""
    return recheck_every * (1 - RECHECK_JITTER * random.random())  # noqa: S311 - jitter, no secret
