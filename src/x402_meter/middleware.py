"""``X402Meter``: the pay-per-token ASGI middleware.

One request through a metered route:

1. no payment header: 402 with the requirements (the most the request can cost);
2. decode strictly, check locally against the server's own requirements;
3. reserve the authorization (single use), verify it with the facilitator;
4. record it, then stream the app's answer through untouched while a meter counts tokens;
5. when the body closes (or the client leaves, or the app fails) charge the exact cost, capped
   at the authorized maximum, and settle it in the background; the receipt tells the outcome.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeAlias, Unpack
from urllib.parse import parse_qs

import anyio
from starlette.datastructures import URL
from starlette.types import Message, Receive, Scope, Send
from x402.schemas import SettleResponse

from x402_meter.config import MeterConfig, MeterOptions
from x402_meter.errors import FacilitatorUnavailableError, PaymentAlreadyUsedError, PaymentError
from x402_meter.metering import Meter, ResponseInfo, Usage
from x402_meter.protocol.checks import Authorization, check_payment
from x402_meter.protocol.headers import (
    PAYMENT_RESPONSE,
    PAYMENT_SIGNATURE,
    X_PAYMENT,
    X_PAYMENT_RESPONSE,
    decode_payment,
    settle_response_header,
)
from x402_meter.protocol.offer import Offer
from x402_meter.responses import receipt_body, send_json, send_payment_required, send_unavailable
from x402_meter.routing import RouteSpec, RouteTable
from x402_meter.runtime import MeterRuntime, runtime_for
from x402_meter.store import LedgerState, PaymentRecord

logger = logging.getLogger("x402_meter")

AnyASGIApp: TypeAlias = Callable[[Any, Any, Any], Awaitable[None]]
"""Any ASGI app, whichever framework's type aliases it was written with."""

RECEIPT_HEADER: Final = b"x-payment-receipt"
_PAYMENT_HEADERS: Final = (PAYMENT_SIGNATURE.encode(), X_PAYMENT.encode())
_STREAMING_TYPES: Final = frozenset(
    {"text/event-stream", "application/x-ndjson", "application/jsonl"}
)
_RECEIPT_ID: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")
_MAX_RECEIPT_WAIT: Final = 30.0


class X402Meter:
    """Charge per token for the routes it meters, with x402 ``upto`` payments.

    ``app.add_middleware(X402Meter, pay_to=..., price_per_token=..., ...)`` on Starlette or
    FastAPI; ``X402Meter(app, ...)`` around any ASGI app. Routes are metered when they match
    ``routes`` (``"POST /v1/chat/completions"``, ``"/v1/answer/*"``) or are marked with
    ``@metered``. See ``MeterConfig.create`` for every option.
    """

    def __init__(self, app: AnyASGIApp, **options: Unpack[MeterOptions]) -> None:
        self.app = app
        self.config = MeterConfig.create(**options)
        self.runtime: MeterRuntime = runtime_for(self.config)
        self._routes = RouteTable(self.config.routes, app)
        self._receipts_path = self.config.receipts_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["path"].startswith(self._receipts_path) and scope["method"] in ("GET", "HEAD"):
                await self._receipt(scope, send)
                return
            spec = self._routes.spec_for(scope)
            if spec is not None:
                await _PaidExchange(self, spec, scope, receive, send).run()
                return
        elif scope["type"] == "lifespan":
            await self.app(scope, self._drain_before_shutdown(receive), send)
            return
        await self.app(scope, receive, send)

    def _drain_before_shutdown(self, receive: Receive) -> Receive:
        async def receive_lifespan() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                with anyio.move_on_after(30):
                    await self.runtime.settler.drain()
            return message

        return receive_lifespan

    async def _receipt(self, scope: Scope, send: Send) -> None:
        receipt_id = scope["path"][len(self._receipts_path) :]
        record = (
            await self.runtime.store.get(receipt_id) if _RECEIPT_ID.fullmatch(receipt_id) else None
        )
        if record is None:
            await send_json(send, 404, {"reason": "receipt_not_found", "error": "no such receipt"})
            return
        wait = _wait_seconds(scope)
        if wait and not record.state.is_final:
            await self.runtime.settler.wait(receipt_id, wait)
            record = await self.runtime.store.get(receipt_id) or record
        await send_json(send, 200, receipt_body(record))


def _wait_seconds(scope: Scope) -> float:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("wait")
    try:
        return min(max(float(values[0]), 0.0), _MAX_RECEIPT_WAIT) if values else 0.0
    except ValueError:
        return 0.0


def _header(scope: Scope, names: Sequence[bytes]) -> bytes | None:
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in names:
            found.setdefault(name, value)
    for name in names:  # PAYMENT-SIGNATURE wins over X-PAYMENT when both are sent
        if name in found:
            return found[name]
    return None


def _media_type(headers: Sequence[tuple[bytes, bytes]]) -> tuple[str, str | None]:
    content_type, encoding = "", None
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-type":
            content_type = value.decode("latin-1").split(";", 1)[0].strip().lower()
        elif lower == b"content-encoding":
            encoding = value.decode("latin-1").strip().lower()
    return content_type, encoding


class _PaidExchange:
    """One metered request, from challenge to settlement hand-off. Holds per-request state."""

    def __init__(
        self, meter: X402Meter, spec: RouteSpec, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.middleware = meter
        self.runtime = meter.runtime
        self.config = meter.config
        self.spec = spec
        self.scope = scope
        self.receive = receive
        self.send = send
        self.status: int | None = None
        self.meter: Meter | None = None
        self.record: PaymentRecord | None = None

    @property
    def resource_url(self) -> str:
        return str(URL(scope=self.scope))

    async def run(self) -> None:
        try:
            offer = await self.runtime.offer(self.spec)
        except FacilitatorUnavailableError as exc:
            logger.warning("facilitator unavailable: %s", exc)
            await send_unavailable(self.send, self.config.retry_after_seconds, str(exc))
            return
        header = _header(self.scope, _PAYMENT_HEADERS)
        if header is None:
            await send_payment_required(
                self.send,
                offer,
                self.resource_url,
                reason="payment_required",
                message="payment required",
            )
            return
        try:
            payload = decode_payment(header, max_bytes=self.config.max_payment_header_bytes)
            authorization = check_payment(
                payload, offer, now=int(time.time()), resource_url=self.resource_url
            )
            await self._reserve(authorization)
        except PaymentError as exc:
            await send_payment_required(
                self.send,
                offer,
                self.resource_url,
                reason=exc.reason,
                message=exc.message,
                status=exc.status_code,
            )
            return
        try:
            verified = await self.runtime.facilitator.verify(
                authorization.payload, authorization.requirements
            )
        except FacilitatorUnavailableError as exc:
            await self.runtime.store.release(authorization.key)
            logger.warning("facilitator unavailable during verify: %s", exc)
            await send_unavailable(self.send, self.config.retry_after_seconds, str(exc))
            return
        except BaseException:
            await self.runtime.store.release(authorization.key)
            raise
        if not verified.is_valid:
            await self.runtime.store.release(authorization.key)
            reason = verified.invalid_reason or "payment_invalid"
            await send_payment_required(
                self.send,
                offer,
                self.resource_url,
                reason=reason,
                message=verified.invalid_message or reason,
            )
            return
        await self._serve(offer, authorization)

    async def _reserve(self, authorization: Authorization) -> None:
        if not await self.runtime.store.reserve(authorization.key, authorization.expires_at):
            raise PaymentAlreadyUsedError()

    async def _serve(self, offer: Offer, authorization: Authorization) -> None:
        now = time.time()
        record = PaymentRecord(
            receipt_id=secrets.token_urlsafe(18),
            key=authorization.key,
            state=LedgerState.VERIFIED,
            scheme=authorization.scheme,
            network=offer.terms.network,
            asset=offer.terms.asset.address,
            payer=authorization.payer,
            pay_to=offer.terms.pay_to,
            max_amount=authorization.max_amount,
            x402_version=authorization.version,
            payload_json=authorization.payload.model_dump_json(by_alias=True, exclude_none=True),
            requirements_json=authorization.requirements.model_dump_json(
                by_alias=True, exclude_none=True
            ),
            created_at=now,
            updated_at=now,
        )
        # Durable before the first byte goes out: a payment that was verified is never lost.
        await self.runtime.store.save(record)
        self.runtime.settler.expect(record.receipt_id)
        self.record = record
        self.offer = offer
        self.authorization = authorization
        self.receipt_path = (
            self.scope.get("root_path", "") + self.config.receipts_path + record.receipt_id
        ).encode()
        self.held: list[Message] | None = None
        self.handed_off = False
        try:
            await self.middleware.app(self.scope, self.receive, self._send)
        finally:
            # Also on client disconnect, app failure and cancellation: charge what was served.
            with anyio.CancelScope(shield=True):
                if not self.handed_off:
                    await self._hand_off_settlement()

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = [*message.get("headers", ()), (RECEIPT_HEADER, self.receipt_path)]
            content_type, encoding = _media_type(headers)
            self.meter = self._new_meter(ResponseInfo(self.status, content_type, encoding))
            message = {**message, "headers": headers}
            if self.config.settle_before_response and content_type not in _STREAMING_TYPES:
                self.held = [message]
                return
        elif message["type"] == "http.response.body" and self.meter is not None:
            body = message.get("body", b"")
            if body:
                self._feed(body)
            if self.held is not None:
                self.held.append(message)
                if not message.get("more_body", False):
                    await self._settle_then_send()
                return
        await self.send(message)

    def _new_meter(self, response: ResponseInfo) -> Meter | None:
        try:
            return self.config.meter(response)
        except Exception:
            logger.exception("meter factory failed; falling back to estimation")
            return None

    def _feed(self, body: bytes) -> None:
        assert self.meter is not None
        try:
            self.meter.feed(body)
        except Exception:  # a meter bug must not break the stream
            logger.exception("meter failed on a chunk; the count falls back to what it had")

    def _usage(self) -> Usage:
        if self.meter is None:
            return Usage(source="estimated")
        try:
            return self.meter.finish()
        except Exception:
            logger.exception("meter failed at the end of the body")
            return Usage(source="estimated")

    def _charged(self) -> PaymentRecord:
        assert self.record is not None
        usage = self._usage()
        if self.status is None or self.status >= 400:
            amount = 0  # the app failed: nothing was served
        elif self.authorization.scheme == "exact":
            amount = self.authorization.max_amount  # flat price
        else:
            amount = self.offer.terms.tariff.charge(
                usage.input_tokens, usage.output_tokens, usage.cached_input_tokens
            )
        return dataclasses.replace(
            self.record,
            state=LedgerState.TO_SETTLE,
            amount=min(amount, self.authorization.max_amount),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            usage_source=usage.source,
            updated_at=time.time(),
        )

    async def _hand_off_settlement(self) -> None:
        self.handed_off = True
        record = self._charged()
        await self.runtime.store.save(record)
        self.runtime.settler.submit(record)

    async def _settle_then_send(self) -> None:
        """``settle_before_response``: settle first, then send the held answer with the result."""
        assert self.held is not None
        self.handed_off = True
        record = self._charged()
        await self.runtime.store.save(record)
        settled = await self.runtime.settler.settle(record, max_attempts=1)
        start, *bodies = self.held
        if settled.state is LedgerState.FAILED:
            await send_payment_required(
                self.send,
                self.offer,
                self.resource_url,
                reason="settlement_failed",
                message=settled.error or "settlement failed",
            )
            return
        if not settled.state.is_final:
            self.runtime.settler.submit(settled)  # the facilitator is down: keep trying later
        else:
            result = SettleResponse(
                success=True,
                transaction=settled.transaction or "",
                network=settled.network,
                payer=settled.payer,
                amount=str(settled.amount or 0),
            )
            name = PAYMENT_RESPONSE if settled.x402_version == 2 else X_PAYMENT_RESPONSE
            start = {
                **start,
                "headers": [*start["headers"], (name.encode(), settle_response_header(result))],
            }
        await self.send(start)
        for body in bodies:
            await self.send(body)
