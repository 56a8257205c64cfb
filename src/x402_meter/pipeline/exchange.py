"""One paid request, top to bottom: admit → record → serve (tapped, under a heartbeat) →
charge → settle. Each stage is its own unit; this reads them in order."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
from starlette.types import Receive, Scope, Send
from x402.schemas import PaymentPayload

from x402_meter.errors import StreamCapped
from x402_meter.pipeline.admission import Admission, Admitted
from x402_meter.pipeline.heartbeat import Heartbeat
from x402_meter.pipeline.ledger_records import LedgerRecords
from x402_meter.pipeline.receipts import receipt_path
from x402_meter.pipeline.refunds import RefundExchange, is_refund_payment, peek_payment
from x402_meter.pipeline.replies import Replies
from x402_meter.pipeline.request import PaidRequestBody
from x402_meter.pipeline.response_tap import ResponseTap
from x402_meter.routing import RouteSpec
from x402_meter.runtime import MeterRuntime
from x402_meter.store import LedgerState

logger = logging.getLogger("x402_meter")

AnyASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
LEDGER_UNAVAILABLE: Final = "ledger_unavailable"
END_SEND_SECONDS: Final = 5.0
"""How long the end of an answer ended early may wait on a client that does not read."""


class PaidExchange:
    """One metered request: admitted (or answered), then served as a ``PaidAnswer``."""

    def __init__(
        self,
        app: AnyASGIApp,
        runtime: MeterRuntime,
        spec: RouteSpec,
        scope: Scope,
        receive: Receive,
        send: Send,
        resource_url: Callable[[], str],
    ) -> None:
        config = runtime.config
        self.app = app
        self.runtime = runtime
        self.send = send
        self.body = PaidRequestBody(scope, receive, limit=config.max_request_body)
        self.replies = Replies(send, config.metrics, resource_url, config.retry_after_seconds)
        self.admission = Admission(runtime, spec, self.body, self.replies)
        self.spec = spec

    async def run(self) -> None:
        runtime = self.runtime
        if runtime.channels is not None:  # sessions: a refund may come to any metered route
            _, payload = peek_payment(self.body.scope, runtime.config.max_payment_header_bytes)
            if is_refund_payment(payload):
                assert isinstance(payload, PaymentPayload)
                refund = RefundExchange(runtime, self.spec, self.body.scope, self.replies, payload)
                await refund.run()
                return
            self.admission.decoded = payload  # decoded once
        admitted = await self.admission.admit()
        if admitted is not None:  # else answered: refused, challenged or unavailable
            await PaidAnswer(self, admitted).serve()


class PaidAnswer:
    """An admitted payment's answer: recorded, served through the tap under the heartbeat,
    charged, settled. Holds the stages, wired to each other."""

    def __init__(self, exchange: PaidExchange, admitted: Admitted) -> None:
        runtime = exchange.runtime
        config, settler = runtime.config, runtime.settler
        scheme, tariff = admitted.scheme, admitted.offer.terms.tariff
        self.app = exchange.app
        self.runtime = runtime
        self.send = exchange.send
        self.body = exchange.body
        self.replies = exchange.replies
        self.admitted = admitted
        self.ledger = LedgerRecords(runtime.store, settler, admitted)
        chosen = config.settle_before_response
        self.app_cancel = anyio.CancelScope()
        """Cancels the app when its answer is ended early (it may be waiting, not sending)."""
        self.tap = ResponseTap(
            self.send,
            request=self.body,
            meter_factory=config.meter,
            receipt_path=receipt_path(
                self.body.scope, config.receipts_path, self.ledger.receipt_id
            ),
            tariff=tariff,
            max_amount=admitted.authorization.max_amount,
            watch_cap=config.on_cap == "end" and scheme.metered,
            hold=scheme.settles_before_response if chosen is None else chosen,
            end_once_charged=scheme.ends_streams_once_charged,
            checkpoint_each_chunk=config.checkpoint_every == 0,
            usage_filter=self.body.shape(tariff) if config.shape_requests else None,
            ledger=self.ledger,
            answered=self._conclude,
            stop_app=self.app_cancel.cancel,
        )
        beat_every = settler.retry.lease_seconds / 3
        if config.checkpoint_every:
            beat_every = min(beat_every, config.checkpoint_every)
        # The heartbeat and the tap are given what they need, not this object: no reference
        # cycle keeps a request's objects alive until the garbage collector runs.
        tap, app_cancel = self.tap, self.app_cancel

        def end() -> None:
            tap.end()
            app_cancel.cancel()

        self.heartbeat = Heartbeat(
            admitted,
            runtime.facilitator,
            beat_every=beat_every,
            recheck_every=config.recheck_every,
            recheck_timeout=config.recheck_timeout,
            expiry_margin=config.expiry_margin,
            checkpoint=tap.checkpoint,
            end=end,
            label=self.ledger.receipt_id,
        )
        self.concluded = False
        """The charge was made and its settlement started (``_conclude`` runs once)."""

    async def serve(self) -> None:
        try:
            await self.ledger.verified()
        except Exception:
            # Nothing can be served without a row to charge it to: give back what admission
            # took (a channel's lock), and say why; the client may try again.
            logger.exception("%s: the ledger could not record it", self.ledger.receipt_id)
            with anyio.CancelScope(shield=True):
                await self.admitted.scheme.unserved(self.admitted.authorization)
            message = "the payment ledger could not record this payment: nothing was served"
            await self.replies.unavailable(message, reason=LEDGER_UNAVAILABLE)
            return
        self.heartbeat.start()
        try:
            with self.app_cancel:
                await self.app(self.body.app_scope, self.body.receive, self.tap.send_message)
        except Exception as exc:
            if not (self.tap.capped and refused_send(exc)):
                raise
            # The app stopped on the StreamCapped its send raised after its answer was ended
            # (at the cap, or early): the answer is closed, the server need not hear of it.
            logger.debug("%s: the app stopped on its refused send", self.ledger.receipt_id)
        finally:
            # Also on client disconnect, app failure and cancellation: charge what was served.
            with anyio.CancelScope(shield=True):
                try:
                    await self._conclude()
                    if self.heartbeat.stopped is not None:
                        await self._ended_early()
                finally:
                    self.runtime.settler.served(self.ledger.receipt_id)
            self.tap.answered = None  # the one reference back to this object

    async def _conclude(self) -> None:
        """Charge what was served and settle it: the one place a settlement starts.

        Reached when a held answer is complete (from the tap) or when the app is done
        (however it ended). A held answer is settled first, then sent with the outcome;
        any other is settled in the background.
        """
        if self.concluded:
            return
        self.concluded = True
        tap, scheme, settler = self.tap, self.admitted.scheme, self.runtime.settler
        scheme.answer_ended(self.admitted.authorization)
        try:
            await self.heartbeat.stop()
            usage = tap.usage()
            self.replies.count("served")
            metrics = self.runtime.config.metrics
            if metrics is not None:
                metrics.tokens(usage.input_tokens, usage.output_tokens)
            record = await self.ledger.charged(usage, tap.served)
        except BaseException:
            # No charge follows (the row stays as last written, for the sweeper): whoever
            # answer_ended told to wait for one must not wait for it.
            scheme.charge_unrecorded(self.admitted.authorization)
            raise
        if tap.held is None or not (tap.held_complete or self.heartbeat.stopped):
            await scheme.settle_later(record, settler)
            return
        if not tap.held_complete:
            tap.end_held()  # ended early: what was held is the whole answer
        settled = await scheme.settle_now(record, settler)
        if settled.state is LedgerState.FAILED:
            message = settled.error or "settlement failed"
            await self.replies.refuse(self.admitted.offer, "settlement_failed", message, 402)
            return
        # Not settled and not failed: nothing was charged (the receipt says so), or the
        # facilitator is unreachable and the sweeper keeps trying; answer anyway.
        start, *bodies = tap.held
        headers = await scheme.response_headers(settled)
        start = {**start, "headers": [*start["headers"], *headers]}
        await self.send(start)
        for body in bodies:
            await self.send(body)

    async def _ended_early(self) -> None:
        """Close the answer (or refuse, if none had started).

        A payer whose re-check read as a void is not remembered here: the settlement of
        what was served is the evidence (the Settler remembers the payer when it fails for
        a voiding reason). A re-check can misread a facilitator's RPC trouble as a void;
        ending the answer is cheap, refusing an honest payer for hours is not.
        """
        heartbeat = self.heartbeat
        if self.tap.held is not None:
            return  # _conclude answered
        assert heartbeat.stopped is not None
        with anyio.move_on_after(END_SEND_SECONDS):
            try:
                if self.tap.status is None:
                    message = f"the answer was ended before it started: {heartbeat.stopped}"
                    await self.replies.refuse(self.admitted.offer, heartbeat.stopped, message, 402)
                else:
                    await self.send({"type": "http.response.body", "body": b"", "more_body": False})
            except Exception:  # the answer had already ended, or the client has gone
                logger.debug("could not close %s", self.ledger.receipt_id, exc_info=True)


def refused_send(exc: BaseException) -> bool:
    """Whether ``exc`` comes of a ``send`` the tap refused: a ``StreamCapped``, or what the app
    or its framework raised while handling one (Starlette's ``ClientDisconnect``), or a group
    of such. Any other failure of the app still reaches the server."""
    if isinstance(exc, BaseExceptionGroup):
        return all(refused_send(inner) for inner in exc.exceptions)
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, StreamCapped):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False
