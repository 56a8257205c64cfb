"""Cooperative refunds of sessions over HTTP, where the x402 SDK clients look for them.

The SDK's ``refund(url)`` probes the resource's URL with a plain ``GET``, expects a 402
offering ``batch-settlement``, then sends its ``type: "refund"`` payload in
``PAYMENT-SIGNATURE`` (with ``GET`` again) and reads ``PAYMENT-RESPONSE``. A metered route is
often ``POST`` only, so the meter answers both at the route's path whatever the method:

- a refund payload, on any method at the path of a metered route, is the meter's: the app
  never runs for it (``RefundExchange``);
- the probe (a ``GET`` with no payment at the path of a route metered for another method)
  goes to the app as any unmetered request does, and only if the app refuses it (404 or
  405) does the meter answer instead, with a 402 offering ``batch-settlement`` alone
  (``RefundProbe``). An app that serves ``GET`` there keeps its answer: the meter never
  takes a route away from the app, and a 402 there gives nothing away (fail closed).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.types import Message, Receive, Scope, Send
from x402.schemas import PaymentPayload, SettleResponse
from x402.schemas.v1 import PaymentPayloadV1

from x402_meter.errors import FacilitatorUnavailableError, PaymentError
from x402_meter.pipeline.admission import PAYMENT_HEADERS, payment_header
from x402_meter.pipeline.replies import Replies
from x402_meter.pricing import PricedRequest, PriceModel, PriceTable, TokenPrice
from x402_meter.protocol.checks import match_offer
from x402_meter.protocol.headers import PAYMENT_RESPONSE, decode_payment, settle_response_header
from x402_meter.protocol.offer import Offer
from x402_meter.routing import RouteSpec, RouteTable
from x402_meter.runtime import MeterRuntime
from x402_meter.schemes.base import Refusal
from x402_meter.schemes.batch_settlement import BatchSettlementScheme
from x402_meter.schemes.channel_payload import is_refund

logger = logging.getLogger("x402_meter")

AnyASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
REFUSED_BY_APP: Final = frozenset({404, 405})
"""The app's answers to the probe that the meter replaces with its 402."""
PROBED_METHODS: Final = frozenset({"GET"})
"""The method of the SDK clients' refund probe."""
OTHER_METHODS: Final = ("POST", "PUT", "PATCH", "DELETE", "GET")
"""Methods under which a path may be metered when the request's own method is not."""


def peek_payment(
    scope: Scope, max_bytes: int
) -> tuple[bytes | None, PaymentPayload | PaymentPayloadV1 | None]:
    """The request's payment header, and its payload if it decodes (None: no header, or a
    malformed one, which admission refuses in its turn)."""
    header = payment_header(scope, PAYMENT_HEADERS)
    if header is None:
        return None, None
    try:
        return header, decode_payment(header, max_bytes=max_bytes)
    except PaymentError:
        return header, None


def is_refund_payment(payload: PaymentPayload | PaymentPayloadV1 | None) -> bool:
    """Whether ``payload`` is a session's cooperative refund."""
    return (
        isinstance(payload, PaymentPayload)
        and payload.accepted.scheme == BatchSettlementScheme.name
        and is_refund(payload.payload)
    )


def refund_price(model: PriceModel, scope: Scope) -> TokenPrice:
    """A price to make the route's offer with for a refund (which pays nothing: only the
    offer's channel terms matter): the route's price, the dearest of a table, or what a
    price function says for a request that names no model."""
    if isinstance(model, TokenPrice):
        return model
    if isinstance(model, PriceTable):
        return model.highest
    return model(PricedRequest(scope["method"], scope["path"], None, None))


def sessions_only(offer: Offer) -> Offer:
    """``offer`` with its ``batch-settlement`` requirements alone."""
    kept = tuple(r for r in offer.requirements if r.scheme == BatchSettlementScheme.name)
    return dataclasses.replace(offer, requirements=kept)


async def refund_offer(runtime: MeterRuntime, spec: RouteSpec, scope: Scope) -> Offer:
    """The route's offer, for a refund or its probe: the sessions part.

    Raises ``FacilitatorUnavailableError`` (the offer needs ``/supported``) and
    ``PaymentError`` (a price function that cannot price the request).
    """
    try:
        price = refund_price(runtime.config.price_model_for(spec), scope)
    except Exception as exc:  # a price function refused a request with no model
        raise PaymentError(
            "refund_price_unavailable",
            f"the route's price function could not price a refund: {type(exc).__name__}",
            status_code=400,
        ) from exc
    return sessions_only(await runtime.offer(spec, price, 0))


class RefundExchange:
    """One refund request: checked, handed to the sessions scheme, answered."""

    def __init__(
        self,
        runtime: MeterRuntime,
        spec: RouteSpec,
        scope: Scope,
        replies: Replies,
        payload: PaymentPayload,
    ) -> None:
        self.runtime = runtime
        self.spec = spec
        self.scope = scope
        self.replies = replies
        self.payload = payload

    async def run(self) -> None:
        scheme = self.runtime.schemes[BatchSettlementScheme.name]
        assert isinstance(scheme, BatchSettlementScheme)
        try:
            offer = await refund_offer(self.runtime, self.spec, self.scope)
        except PaymentError as exc:
            await self.replies.refuse_request(exc)
            return
        except FacilitatorUnavailableError as exc:
            await self.replies.unavailable(str(exc))
            return
        try:
            requirements = match_offer(self.payload, offer)
            outcome = await scheme.refund(self.payload, requirements, self.runtime.facilitator)
        except PaymentError as exc:
            await self.replies.refuse(offer, exc.reason, exc.message, exc.status_code)
            return
        except FacilitatorUnavailableError as exc:
            logger.warning("facilitator unavailable during a refund: %s", exc)
            await self.replies.unavailable(str(exc))
            return
        if isinstance(outcome, Refusal):
            if outcome.extra is not None:
                offer = offer.with_extra(scheme.name, outcome.extra)
            await self.replies.refuse(offer, outcome.reason, outcome.message, outcome.status)
            return
        await self._answer(offer, outcome)

    async def _answer(self, offer: Offer, result: SettleResponse) -> None:
        """As the SDK's server answers: 200 with ``PAYMENT-RESPONSE``, or a 402 whose
        ``PAYMENT-RESPONSE`` carries the facilitator's refusal."""
        headers = [(PAYMENT_RESPONSE.encode(), settle_response_header(result))]
        if not result.success:
            reason = result.error_reason or "refund_failed"
            message = result.error_message or reason
            await self.replies.refuse(offer, reason, message, 402, headers)
            return
        channel_state = (result.extra or {}).get("channelState", {})
        body = {"message": "Refund acknowledged", "channelId": channel_state.get("channelId")}
        await self.replies.refunded(body, headers)


class RefundProbe:
    """A ``GET`` with no payment at the path of a route metered for another method: the
    app answers; if it refuses (404, 405), the meter's 402 offers a session instead."""

    def __init__(
        self,
        app: AnyASGIApp,
        runtime: MeterRuntime,
        spec: RouteSpec,
        scope: Scope,
        receive: Receive,
        send: Send,
        replies: Replies,
    ) -> None:
        self.app = app
        self.runtime = runtime
        self.spec = spec
        self.scope = scope
        self.receive = receive
        self.send = send
        self.replies = replies
        self.refused = False
        """The app refused the request: its answer is dropped for the 402."""

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.refused = message["status"] in REFUSED_BY_APP
        if not self.refused:
            await self.send(message)

    async def run(self) -> None:
        await self.app(self.scope, self.receive, self._send)
        if not self.refused:
            return
        try:
            offer = await refund_offer(self.runtime, self.spec, self.scope)
        except PaymentError as exc:
            await self.replies.refuse_request(exc)
            return
        except FacilitatorUnavailableError as exc:
            await self.replies.unavailable(str(exc))
            return
        await self.replies.refuse(
            offer,
            "payment_required",
            "this path is paid with another method; a session's refund is asked for here",
            402,
        )


class RefundDoor:
    """Where a session's refund, and the SDK clients' probe for one, come in: a request at
    the path of a metered route under a method that is not metered there."""

    def __init__(
        self,
        app: AnyASGIApp,
        runtime: MeterRuntime,
        route_table: RouteTable,
        resource_url: Callable[[Scope], str],
    ) -> None:
        """``app``: what answers anything else (and the probe first); ``route_table``: what
        says which paths are metered under which methods."""
        self.app = app
        self.runtime = runtime
        self.route_table = route_table
        self.resource_url = resource_url

    def metered_elsewhere(self, scope: Scope) -> RouteSpec | None:
        """The spec of a route metered at this request's path under another method (None:
        none, or sessions are off: then there are no refunds to take)."""
        if self.runtime.channels is None:
            return None
        for method in OTHER_METHODS:
            if method != scope["method"]:
                spec = self.route_table.spec_for({**scope, "method": method})
                if spec is not None:
                    return spec
        return None

    async def enter(self, spec: RouteSpec, scope: Scope, receive: Receive, send: Send) -> None:
        """A refund is the meter's, the refund probe gets a 402 where the app refuses it,
        and anything else is the app's."""
        config = self.runtime.config
        replies = Replies(
            send, config.metrics, lambda: self.resource_url(scope), config.retry_after_seconds
        )
        header, payload = peek_payment(scope, config.max_payment_header_bytes)
        if is_refund_payment(payload):
            assert isinstance(payload, PaymentPayload)
            await RefundExchange(self.runtime, spec, scope, replies, payload).run()
        elif header is None and scope["method"] in PROBED_METHODS:
            await RefundProbe(self.app, self.runtime, spec, scope, receive, send, replies).run()
        else:
            await self.app(scope, receive, send)


__all__ = [
    "RefundDoor",
    "RefundExchange",
    "RefundProbe",
    "is_refund_payment",
    "peek_payment",
    "refund_offer",
    "refund_price",
]
