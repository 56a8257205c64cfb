"""The response tap: the app's ``send``, metered on its way to the client.

Chunks go out untouched (unless a usage chunk is filtered) while the meter counts them in
batches; ``on_cap="end"`` looks at the count now and then and ends the answer at the
authorized maximum; an answer that is settled before it is sent is held.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import anyio
from starlette.types import Message, Send

from x402_meter.errors import StreamCapped
from x402_meter.metering import Meter, MeterFactory, ResponseInfo, Usage
from x402_meter.pipeline.ledger_records import LedgerRecords
from x402_meter.pipeline.request import PaidRequestBody
from x402_meter.pricing import Tariff
from x402_meter.shaping import UsageChunkFilter

logger = logging.getLogger("x402_meter")

RECEIPT_HEADER: Final = b"x-payment-receipt"
STREAMING_TYPES: Final = frozenset(
    {"text/event-stream", "application/x-ndjson", "application/jsonl"}
)
METER_BATCH_BYTES: Final = 16 * 1024
"""Chunks are handed to the meter together, once this much has gone out (or sooner, when
a checkpoint, a cap check or the end needs the count): what it costs to read a stream is
then paid per batch, not per chunk of a few hundred bytes."""
CAP_LOOK_BYTES: Final = 2048
"""The least that goes out between two looks at the cap (``on_cap="end"``)."""


class ResponseTap:
    """Wraps one paid request's ``send`` (``send_message``). Holds the meter and what it has
    not yet read."""

    def __init__(
        self,
        send: Send,
        *,
        request: PaidRequestBody,
        meter_factory: MeterFactory,
        receipt_path: bytes,
        tariff: Tariff,
        max_amount: int,
        watch_cap: bool,
        hold: bool,
        end_once_charged: bool,
        checkpoint_each_chunk: bool,
        usage_filter: UsageChunkFilter | None,
        ledger: LedgerRecords,
        answered: Callable[[], Awaitable[None]] | None,
        stop_app: Callable[[], None],
    ) -> None:
        self.send = send
        self.request = request
        self.meter_factory = meter_factory
        self.receipt_path = receipt_path
        self.tariff = tariff
        self.max_amount = max_amount
        self.hold = hold
        """Hold a non-streamed answer until it is settled."""
        self.end_once_charged = end_once_charged
        """Send a streamed answer's end (its last, empty chunk) once it is charged."""
        self.checkpoint_each_chunk = checkpoint_each_chunk
        """``checkpoint_every=0``: what a client has received is on record before it goes."""
        self.usage_filter = usage_filter
        self.ledger = ledger
        self.answered = answered
        """Called once a held answer is complete (settles it and sends it), or once a
        streamed answer whose end waits for its charge has sent its last chunk (charges it)
        (``None`` once the exchange is over: no cycle keeps the request's objects alive)."""
        self.stop_app = stop_app
        """Stops the app once its answer has ended at the cap: it may be waiting on its
        upstream, not sending, and the charge waits for it."""
        self.status: int | None = None
        self.meter: Meter | None = None
        self.held: list[Message] | None = None
        """The held answer's messages (``None``: not held)."""
        self.held_complete = False
        self.capped = False
        """The answer was ended: every further chunk is refused with ``StreamCapped`` (and
        the app is stopped, ``stop_app``)."""
        self.fast = False
        """Body chunks may take ``send``'s fast path: metered, nothing held or filtered,
        not capped. ``feed_at`` stays 0 (no chunk takes it) while this is false."""
        self.next_cap_check = float(CAP_LOOK_BYTES) if watch_cap else float("inf")
        """Bytes forwarded at which ``_cap_reached`` looks next (infinite if it never would)."""
        self.pending: list[bytes] = []
        """Chunks forwarded but not yet fed to the meter (less than METER_BATCH_BYTES)."""
        self.fed = 0
        """Bytes fed to the meter."""
        self.unfed = 0
        """Bytes of ``pending``."""
        self.feed_at = 0
        """``unfed`` at which a chunk leaves the fast path: a batch is full, or the cap is
        due a look (0 while every chunk must: ``checkpoint_each_chunk``)."""

    @property
    def served(self) -> bool:
        """Whether the app answered with success (a failed answer is charged nothing)."""
        return self.status is not None and self.status < 400

    @property
    def forwarded(self) -> int:
        """Bytes of the body sent so far."""
        return self.fed + self.unfed

    def send_message(self, message: Message) -> Awaitable[None]:
        """The app's ``send``; given to it as this bound method (calling an object with
        ``__call__`` costs more per chunk)."""
        # Not a coroutine: most chunks only go into the meter's next batch and on to the
        # server, and the app then awaits the server's own send, with no frame of ours in
        # between. The rest (a full batch, a look at the cap, the start, the end, a held
        # answer) takes _send_slowly.
        if message["type"] == "http.response.body":  # feed_at is 0 unless the fast path may
            body = message.get("body", b"")
            unfed = self.unfed + len(body)
            if unfed < self.feed_at and (
                not self.end_once_charged or message.get("more_body", False)
            ):
                self.unfed = unfed
                self.pending.append(body)
                return self.send(message)
        return self._send_slowly(message)

    async def _send_slowly(self, message: Message) -> None:
        if self.capped:
            raise StreamCapped("the authorized maximum was reached: the answer has ended")
        if message["type"] == "http.response.body" and self.meter is not None:
            body = message.get("body", b"")
            if body:
                # The meter reads in batches (METER_BATCH_BYTES); whatever needs the count
                # (a checkpoint, the cap, the end) hands it what is pending first.
                self.pending.append(body)
                self.unfed += len(body)
                if self.unfed >= METER_BATCH_BYTES:
                    self._feed_pending()
                if self.checkpoint_each_chunk:
                    await self.checkpoint()
                if self.forwarded >= self.next_cap_check and self._cap_reached():
                    self.capped, self.fast = True, False
                    message = {**message, "more_body": False}  # this chunk is the last
                self._set_feed_at()
            if self.usage_filter is not None:
                shown = self.usage_filter.filter(body)
                if not message.get("more_body", False):
                    shown += self.usage_filter.flush()
                message = {**message, "body": shown}
            if self.held is not None:
                self.held.append(message)
                if not message.get("more_body", False):
                    self.held_complete = True
                    await self._charge()
                if self.capped:
                    self.stop_app()
                return
            if self.end_once_charged and not message.get("more_body", False):
                await self._end_once_charged(message)
                return
        elif message["type"] == "http.response.start":
            message = self._started(message)
            if self.held is not None:
                return
        await self.send(message)
        if self.capped:  # the cap was reached at this chunk, the answer's last: it is closed
            self.stop_app()

    def _started(self, message: Message) -> Message:
        """The answer's start: the receipt header, no shared caching, a meter, hold or not."""
        self.status = message["status"]
        headers = [*message.get("headers", ()), (RECEIPT_HEADER, self.receipt_path)]
        if not any(name.lower() == b"cache-control" for name, _ in headers):
            # A paid answer is the payer's alone: no shared cache may hand it to the next
            # caller for free. An app that sets its own policy has chosen otherwise.
            headers.append((b"cache-control", b"no-store"))
        content_type, encoding = media_type(headers)
        request = self.request
        info = ResponseInfo(
            self.status, content_type, encoding, bytes(request.seen), request.scope["path"]
        )
        self.meter = self._new_meter(info)
        message = {**message, "headers": headers}
        if self.hold and content_type not in STREAMING_TYPES:
            self.held = [message]
            return message
        self.fast = self.meter is not None and self.usage_filter is None
        self._set_feed_at()
        return message

    async def _end_once_charged(self, last: Message) -> None:
        """Send the streamed answer's last chunk, have it charged, then end the body: the
        client learns that the answer is complete only once its charge is made."""
        if last.get("body"):
            await self.send({**last, "more_body": True})
        await self._charge()
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.capped:  # the cap was reached at the last chunk: the answer is closed
            self.stop_app()

    async def _charge(self) -> None:
        """Have the answer charged (and a held one sent: ``answered``) from within the app's
        send, not cancelled with that send: a framework cancels it when the client leaves
        (Starlette's ``StreamingResponse``), and a charge cut short would be left to the
        sweeper at the last checkpoint, a channel held until then. (When the app is done
        first, the exchange charges under a shield of its own.)"""
        if self.answered is not None:
            with anyio.CancelScope(shield=True):
                await self.answered()

    async def checkpoint(self) -> None:
        """Record the count so far in the ledger (and extend the row's lease)."""
        await self.ledger.checkpoint(self.snapshot(), self.served)

    def end(self) -> None:
        """The answer ends now: the app's next ``send`` raises ``StreamCapped`` (every chunk
        now takes the slow path, which checks)."""
        self.capped, self.fast, self.feed_at = True, False, 0

    def end_held(self) -> None:
        """An answer ended early while held: what was held is the whole answer."""
        assert self.held is not None
        last = self.held[-1]
        if last["type"] == "http.response.body":
            self.held[-1] = {**last, "more_body": False}
        else:
            self.held.append({"type": "http.response.body", "body": b"", "more_body": False})
        self.held_complete = True

    def _set_feed_at(self) -> None:
        if not self.fast or self.checkpoint_each_chunk:
            self.feed_at = 0
        else:  # the unfed bytes at which a batch is full or the cap is due a look
            due = self.next_cap_check - self.fed
            self.feed_at = int(min(METER_BATCH_BYTES, max(due, 0)))

    # -- the count -----------------------------------------------------------------------

    def _new_meter(self, response: ResponseInfo) -> Meter | None:
        try:
            return self.meter_factory(response)
        except Exception:
            logger.exception("meter factory failed; the count falls back to estimation")
            return None

    def _feed_pending(self) -> None:
        """Feed the meter the chunks that went out since it was last fed, as one."""
        if not self.pending:
            return
        pending = self.pending
        body = pending[0] if len(pending) == 1 else b"".join(pending)
        self.pending = []
        self.fed += self.unfed
        self.unfed = 0
        self._set_feed_at()
        assert self.meter is not None
        try:
            self.meter.feed(body)
        except Exception:  # a meter bug must not break the stream
            logger.exception("meter failed on a chunk; the count keeps what it had")

    def usage(self) -> Usage:
        """The count of the whole answer (once, at the end)."""
        self._feed_pending()
        if self.meter is not None:
            try:
                return self.meter.finish()
            except Exception:
                logger.exception("meter failed at the end of the body")
        return Usage(input_source="estimated", output_source="estimated")

    def snapshot(self) -> Usage | None:
        """The count so far, if the meter can tell it mid-stream."""
        self._feed_pending()
        snapshot = getattr(self.meter, "snapshot", None)
        if snapshot is None:
            return None
        try:
            usage: Usage = snapshot()
        except Exception:
            logger.exception("meter snapshot failed")
            return None
        return usage

    def _cap_reached(self) -> bool:
        """``on_cap="end"``: has the count reached the authorized maximum?

        ``_send_slowly`` calls it once ``forwarded`` reaches ``next_cap_check``. The looks
        are half again as far apart as the stream is long (at least 2 KiB), so that a long
        answer pays for few of them; once the count is taken, the next one comes no later
        than halfway to where, at the rate so far, the maximum would be reached: a stream
        that goes on at a steady rate is ended within 2 KiB past it.
        """
        forwarded = self.forwarded
        self.next_cap_check = forwarded + max(CAP_LOOK_BYTES, forwarded // 2)
        # A token is at least one byte: until the bytes seen could pay for the maximum at the
        # highest price, the count cannot have reached it, and nothing needs counting.
        tariff = self.tariff
        maximum = self.max_amount
        bytes_seen = forwarded + len(self.request.seen)
        if not tariff.could_reach(bytes_seen, maximum):
            return False
        usage = self.snapshot()
        if usage is None:
            return False
        exact = tariff.charge(usage.input_tokens, usage.output_tokens, usage.cached_input_tokens)
        if exact >= maximum:
            return True
        if exact > 0:  # the bytes at which the rate so far reaches the maximum, halfway there
            halfway = forwarded + (forwarded * maximum // exact - forwarded) // 2
            self.next_cap_check = min(self.next_cap_check, max(forwarded + CAP_LOOK_BYTES, halfway))
        return False


def media_type(headers: Sequence[tuple[bytes, bytes]]) -> tuple[str, str | None]:
    """The response's media type (lower-cased, no parameters) and content encoding."""
    content_type, encoding = "", None
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-type":
            content_type = value.decode("latin-1").split(";", 1)[0].strip().lower()
        elif lower == b"content-encoding":
            encoding = value.decode("latin-1").strip().lower()
    return content_type, encoding
