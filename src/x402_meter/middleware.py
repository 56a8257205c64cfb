"""``X402Meter``: the pay-per-token ASGI middleware.

One request through a metered route:

1. no payment header: 402 with the requirements (the most the request can cost);
2. decode strictly, check locally against the server's own requirements;
3. reserve the authorization (single use, in the shared store), verify it with the facilitator;
4. record it in the ledger, then stream the app's answer through untouched while a meter
   counts tokens; a heartbeat checkpoints the running count and keeps the row leased, has
   the facilitator re-verify the authorization, and ends the answer if it would no longer
   be paid (voided, or its deadline near);
5. when the body closes (or the client leaves, or the app fails) charge the exact cost, capped
   at the authorized maximum, and settle it in the background; the receipt tells the outcome.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Final, TypeAlias, Unpack
from urllib.parse import parse_qs

import anyio
from starlette.datastructures import URL
from starlette.types import Message, Receive, Scope, Send
from x402.schemas import SettleResponse

from x402_meter.config import MeterConfig, MeterOptions
from x402_meter.errors import (
    ConfigurationError,
    FacilitatorUnavailableError,
    PaymentAlreadyUsedError,
    PaymentError,
    RequestRefusedError,
)
from x402_meter.metering import Meter, ResponseInfo, Usage, estimate_tokens, get_tokenizer
from x402_meter.metering.prompt import prompt_text
from x402_meter.pricing import (
    PricedRequest,
    PriceModel,
    PriceTable,
    TokenPrice,
    to_atomic,
)
from x402_meter.protocol.checks import Authorization, check_payment
from x402_meter.protocol.headers import (
    PAYMENT_RESPONSE,
    PAYMENT_SIGNATURE,
    X_PAYMENT,
    X_PAYMENT_RESPONSE,
    decode_payment,
    settle_response_header,
)
from x402_meter.protocol.offer import Offer, v1_network_name
from x402_meter.request_body import read_request_body
from x402_meter.responses import receipt_body, send_json, send_payment_required, send_unavailable
from x402_meter.route_paths import below_root
from x402_meter.routing import RouteSpec, RouteTable
from x402_meter.runtime import MeterRuntime
from x402_meter.shaping import UsageChunkFilter, shape_request
from x402_meter.startup import (
    LITESTAR_NEEDS_PLUGIN,
    MisconfiguredMeter,
    built_lazily,
    wraps_litestar_route,
)
from x402_meter.store import LedgerState, PaymentRecord
from x402_meter.voiding import (
    PAYER_VOIDED,
    is_voiding,
    refuse_voided_payer,
    remember_voided_payer,
)

logger = logging.getLogger("x402_meter")

AnyASGIApp: TypeAlias = Callable[[Any, Any, Any], Awaitable[None]]
"""Any ASGI app, whichever framework's type aliases it was written with."""

RECEIPT_HEADER: Final = b"x-payment-receipt"
PERMIT2_ALLOWANCE_REQUIRED: Final = "permit2_allowance_required"
_PAYMENT_HEADERS: Final = (PAYMENT_SIGNATURE.encode(), X_PAYMENT.encode())
_STREAMING_TYPES: Final = frozenset(
    {"text/event-stream", "application/x-ndjson", "application/jsonl"}
)
_RECEIPT_ID: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")
_MAX_RECEIPT_WAIT: Final = 30.0
_RECEIPT_POLL: Final = 0.5
_PROMPT_COUNTED_INLINE: Final = 64 * 1024
"""Bodies up to this many bytes have their prompt counted on the event loop (well under a
millisecond); longer ones on a worker thread."""
METER_BATCH_BYTES: Final = 16 * 1024
"""Chunks are handed to the meter together, once this much has gone out (or sooner, when
a checkpoint, a cap check or the end needs the count): what it costs to read a stream is
then paid per batch, not per chunk of a few hundred bytes."""
CAP_LOOK_BYTES: Final = 2048
"""The least that goes out between two looks at the cap (``on_cap="end"``)."""
_RESOURCE_URLS_KEPT: Final = 256
RECHECK_MISSES_TOLERATED: Final = 1
"""Re-checks in a row that may go unanswered (facilitator down or slower than
``recheck_every``) before the answer ends: one blip is tolerated, an outage is not."""
END_SEND_SECONDS: Final = 5.0
"""How long the end of an answer ended early may wait on a client that does not read."""


class X402Meter:
    """Charge per token for the routes it meters, with x402 ``upto`` payments.

    ``app.add_middleware(X402Meter, pay_to=..., price_per_token=..., ...)`` on Starlette or
    FastAPI; ``X402Meter(app, ...)`` around any ASGI app. Routes are metered when they match
    ``routes`` (``"POST /v1/chat/completions"``, ``"/v1/answer/*"``) or are marked with
    ``@metered``. ``MeterConfig.create`` documents every option.
    """

    receipts_routed: ClassVar[bool] = False
    """Whether something routes the receipts path to this meter where the framework routes
    before middleware runs (``X402MeterPlugin`` does, in Litestar)."""

    def __init__(
        self,
        app: AnyASGIApp,
        *,
        runtime: MeterRuntime | None = None,
        **options: Unpack[MeterOptions],
    ) -> None:
        """A bad option raises ``ConfigurationError``; where Starlette or FastAPI build the
        middleware lazily, it fails the server's startup instead (``x402_meter.startup``).

        ``runtime``: share another meter's runtime (its options, store and settlement
        worker) instead of giving options; without it, this meter creates its own.
        """
        self.app = app
        self.misconfigured: MisconfiguredMeter | None = None
        """Set instead of serving when a framework built this meter with a bad option."""
        self._resource_urls: dict[tuple[Any, ...], str] = {}
        try:
            if runtime is not None and options:
                raise ConfigurationError("give X402Meter either runtime= or options, not both")
            self.runtime = runtime if runtime is not None else MeterRuntime(MeterConfig(**options))
        except ConfigurationError as exc:
            if not built_lazily():
                raise
            self.misconfigured = MisconfiguredMeter(exc)  # it answers every request
            return
        self.config: MeterConfig = self.runtime.config
        if not self.receipts_routed and wraps_litestar_route(app):
            raise ConfigurationError(LITESTAR_NEEDS_PLUGIN)
        self.route_table = RouteTable(self.config.routes, app)
        self._receipts_path = self.config.receipts_path

    def resource_url(self, scope: Scope) -> str:
        """``str(URL(scope=scope))``, remembered for the parts of the scope it is made of."""
        host = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
                break
        server = scope.get("server")
        key = (
            scope.get("scheme", "http"),
            None if server is None else tuple(server),
            scope["path"],
            scope.get("query_string", b""),
            host,
        )
        url = self._resource_urls.get(key)
        if url is None:
            if len(self._resource_urls) >= _RESOURCE_URLS_KEPT:
                self._resource_urls.clear()
            url = self._resource_urls[key] = str(URL(scope=scope))
        return url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.misconfigured is not None:
            await self.misconfigured(scope, receive, send)
            return
        if scope["type"] == "http":
            if _route_path(scope).startswith(self._receipts_path) and scope["method"] in (
                "GET",
                "HEAD",
            ):
                await self._receipt(scope, send)
                return
            spec = self.route_table.spec_for(scope)
            if spec is not None:
                self.runtime.settler.ensure_sweeper()
                await _PaidExchange(self, spec, scope, receive, send).run()
                return
        elif scope["type"] == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), send)
            return
        await self.app(scope, receive, send)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        """Start the settlement sweeper with the app; let settlements finish before shutdown."""

        async def receive_lifespan() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.runtime.settler.ensure_sweeper()  # resumes what a previous run left
                warm_up_tokenizer()
                self.route_table.warn_if_nothing_metered()
            elif message["type"] == "lifespan.shutdown":
                with anyio.move_on_after(30):
                    await self.runtime.settler.aclose()
            return message

        return receive_lifespan

    async def _receipt(self, scope: Scope, send: Send) -> None:
        receipt_id = _route_path(scope)[len(self._receipts_path) :]
        store = self.runtime.store
        record = await store.get(receipt_id) if _RECEIPT_ID.fullmatch(receipt_id) else None
        if record is None:
            await send_json(send, 404, {"reason": "receipt_not_found", "error": "no such receipt"})
            return
        deadline = time.monotonic() + _wait_seconds(scope)
        while not record.state.is_final and (left := deadline - time.monotonic()) > 0:
            # Woken at once by a settlement in this process; another worker's outcome is
            # seen when the store is read again, twice a second.
            await self.runtime.settler.wait(receipt_id, min(left, _RECEIPT_POLL))
            record = await store.get(receipt_id) or record
        asset = self.config.payment_asset
        decimals = asset.decimals if record.asset.lower() == asset.address.lower() else None
        await send_json(send, 200, receipt_body(record, decimals))


def warm_up_tokenizer() -> None:
    """Load the fallback tokenizer's vocabulary on a thread now, not in a request later."""
    import threading

    def load() -> None:
        try:
            get_tokenizer()
        except Exception:  # the optional extra is missing: estimates use bytes / 4
            logger.info("no offline tokenizer (pip install 'x402-meter[tokenizer]')")

    threading.Thread(target=load, name="x402-tokenizer-warm-up", daemon=True).start()


def _route_path(scope: Scope) -> str:
    """The path below where this app is mounted (Starlette keeps the prefix in ``path``).

    Only receipts are looked up by it: whatever it says, the app is never called for them.
    """
    return below_root(scope["path"], scope.get("root_path", ""))


def _wait_seconds(scope: Scope) -> float:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("wait")
    try:
        return min(max(float(values[0]), 0.0), _MAX_RECEIPT_WAIT) if values else 0.0
    except ValueError:
        return 0.0


NOT_JSON: Final = object()
"""What ``_request_json`` reads from a body that is empty or not JSON."""


def _model_refusal(table: PriceTable, body: object, requested: str | None) -> RequestRefusedError:
    """400 for a request a price table cannot price, saying why, with the models it prices."""
    models = [name for name, _ in table.prices]
    listed = ", ".join(models)
    if body is NOT_JSON:
        reason = "invalid_json_body"
        message = f"this route is priced by model: send a JSON body naming one of: {listed}"
    elif not requested:
        reason = "model_required"
        message = f'this route is priced by model: name one in "model", one of: {listed}'
    else:
        reason = "unknown_model"
        message = (
            f"no price for model {requested[:80]!r} here; priced: {listed} (and any model whose "
            "name starts with one of them)"
        )
    return RequestRefusedError(reason, message, status_code=400, details={"models": models})


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


def usage_source(usage: Usage) -> str:
    """How the ledger records where the counts came from, per side."""
    return f"input={usage.input_source},output={usage.output_source}"


class StreamCapped(OSError):  # noqa: N818 - named for what happened, like ConnectionResetError
    """Raised to the app on ``send`` after its answer was ended at the authorized maximum.

    An ``OSError``, as ASGI servers raise when the client has gone: apps already stop on it.
    """


class _PaidExchange:
    """One metered request, from challenge to settlement hand-off. Holds per-request state."""

    def __init__(
        self, middleware: X402Meter, spec: RouteSpec, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.middleware = middleware
        self.runtime = middleware.runtime
        self.config = middleware.config
        self.spec = spec
        self.scope = scope
        self.receive = receive
        self.send = send
        self.status: int | None = None
        self.meter: Meter | None = None
        self.request_body = bytearray()
        self.held: list[Message] | None = None
        self.handed_off = False
        self.checkpointed_at = time.monotonic()
        self.replay: bytes | None = None
        self.early_disconnect: Message | None = None
        self.app_scope: Scope = scope
        self.usage_filter: UsageChunkFilter | None = None
        self.capped = False
        self.fast = False
        """Body chunks may take ``_send``'s fast path: metered, nothing held or filtered,
        not capped. ``feed_at`` stays 0 (no chunk takes it) while this is false."""
        self.next_cap_check = float(CAP_LOOK_BYTES)
        """Bytes forwarded at which ``_cap_reached`` looks next (infinite if it never would)."""
        self.pending: list[bytes] = []
        """Chunks forwarded but not yet fed to the meter (less than METER_BATCH_BYTES)."""
        self.fed = 0
        """Bytes fed to the meter."""
        self.unfed = 0
        """Bytes of ``pending``."""
        self.feed_at = 0
        """``unfed`` at which a chunk leaves the fast path: a batch is full, or the cap is
        due a look (0 while every chunk must: ``checkpoint_every=0``)."""
        self.heartbeat_timer: asyncio.TimerHandle | None = None
        self.heartbeat_task: asyncio.Task[None] | None = None
        self.serving = False
        self.beat_every = 0.0
        """Seconds between heartbeats (set in ``_serve``)."""
        self.end_at = 0.0
        """Unix time at which the answer ends, early enough for its settlement to land."""
        self.recheck_at = float("inf")
        """``time.monotonic()`` at which the authorization is re-verified next."""
        self.recheck_task: asyncio.Task[None] | None = None
        self.recheck_misses = 0
        self.app_cancel = anyio.CancelScope()
        """Cancels the app when its answer is ended early (it may be waiting, not sending)."""
        self.stopped: str | None = None
        """Why the answer was ended early: ``payer_voided``, ``payment_invalid``,
        ``authorization_expiring`` or ``facilitator_unavailable``."""
        self.voided: str | None = None
        """The facilitator's reason, when a re-check found that the payer voided it."""

    @property
    def resource_url(self) -> str:
        return self.middleware.resource_url(self.scope)

    @property
    def _voided_for(self) -> float:
        return self.config.voided_payer_seconds

    async def run(self) -> None:
        model = self.config.price_model_for(self.spec)
        try:
            if self._reads_body(model):
                await self._buffer_request_body()
            price = self._price(model)
            input_tokens = await self._prompt_tokens(price)
        except (PaymentError, RequestRefusedError) as exc:
            self._count("refused", exc.reason)
            retry_after = getattr(exc, "retry_after", None)
            headers = None if retry_after is None else [(b"retry-after", b"%d" % retry_after)]
            body = {"reason": exc.reason, "error": exc.message, **getattr(exc, "details", {})}
            await send_json(self.send, exc.status_code, body, headers)
            return
        try:
            offer = await self.runtime.offer(self.spec, price, input_tokens)
        except FacilitatorUnavailableError as exc:
            logger.warning("facilitator unavailable: %s", exc)
            self._count("unavailable")
            await send_unavailable(self.send, self.config.retry_after_seconds, str(exc))
            return
        header = _header(self.scope, _PAYMENT_HEADERS)
        if header is None:
            await self._refuse(offer, "payment_required", "payment required", 402)
            return
        try:
            payload = decode_payment(header, max_bytes=self.config.max_payment_header_bytes)
            now = int(time.time())
            authorization = check_payment(payload, offer, now=now, resource_url=self.resource_url)
            if authorization.expires_at - self.config.expiry_margin <= now:
                # Nothing served now could be settled in time: refused before it is reserved.
                raise PaymentError(
                    "payment_expires_too_soon",
                    f"the authorization must be valid for more than {self.config.expiry_margin} s",
                )
            await refuse_voided_payer(self.runtime.store, authorization.payer, self._voided_for)
            if not await self.runtime.store.reserve(authorization.key, authorization.expires_at):
                raise PaymentAlreadyUsedError()
        except PaymentError as exc:
            await self._refuse(offer, exc.reason, exc.message, exc.status_code)
            return
        try:
            verified = await self.runtime.facilitator.verify(
                authorization.payload, authorization.requirements
            )
        except FacilitatorUnavailableError as exc:
            await self.runtime.store.release(authorization.key)  # it was never used
            logger.warning("facilitator unavailable during verify: %s", exc)
            self._count("unavailable")
            await send_unavailable(self.send, self.config.retry_after_seconds, str(exc))
            return
        except BaseException:
            await self.runtime.store.release(authorization.key)
            raise
        if not verified.is_valid:
            await self.runtime.store.release(authorization.key)
            reason = verified.invalid_reason or "payment_invalid"
            # The spec's answer for a wallet that has not approved Permit2 (and sent no
            # gas-sponsoring permit): 412, so the client knows to approve or sign one.
            status = 412 if reason == PERMIT2_ALLOWANCE_REQUIRED else 402
            await self._refuse(offer, reason, verified.invalid_message or reason, status)
            return
        if self.config.shape_requests:
            self._shape(offer)
        await self._serve(offer, authorization)

    def _count(self, outcome: str, reason: str | None = None) -> None:
        if self.config.metrics is not None:
            self.config.metrics.request(outcome, reason)

    def _reads_body(self, model: PriceModel) -> bool:
        """Whether admission needs the body: for the prompt's price, the model's price or
        the shaping. (A prompt that costs nothing is only counted as it goes by.)"""
        if self.config.shape_requests or not isinstance(model, TokenPrice):
            return True
        return model.input > 0 or model.cached_input > 0

    async def _buffer_request_body(self) -> None:
        """Read the whole body now, within the meter's bounds; the app gets it replayed."""
        read = await read_request_body(
            self.scope,
            self.receive,
            limit=self.config.max_request_body,
            time_limit=self.config.request_body_timeout,
            budget=self.runtime.body_budget,
        )
        self.request_body = bytearray(read.body)
        self.early_disconnect = read.disconnect
        self.replay = read.body

    async def _prompt_tokens(self, price: TokenPrice) -> int:
        """The prompt as the meter estimates it (what the 402 asks to cover on top of the
        output), or 0 when input is free. Over ``max_input_tokens``: 413."""
        if not (price.input > 0 or price.cached_input > 0):
            return 0
        body = bytes(self.request_body)
        if len(body) <= _PROMPT_COUNTED_INLINE:
            tokens = estimate_tokens(prompt_text(body))
        else:  # a long prompt takes milliseconds to count: not on the event loop
            tokens = await anyio.to_thread.run_sync(estimate_tokens, prompt_text(body))
        limit = self.spec.max_input_tokens or self.config.max_input_tokens
        if limit is not None and tokens > limit:
            raise RequestRefusedError(
                "prompt_too_large",
                f"the prompt has about {tokens} tokens; this route takes at most {limit}",
                status_code=413,
            )
        return tokens

    def _request_json(self) -> object:
        """The body as JSON; ``NOT_JSON`` when it is empty or not JSON."""
        try:
            return json.loads(self.request_body) if self.request_body else NOT_JSON
        except (ValueError, RecursionError):
            return NOT_JSON

    def _price(self, model: PriceModel) -> TokenPrice:
        if isinstance(model, TokenPrice):
            return model
        body = self._request_json()
        name = body.get("model") if isinstance(body, dict) else None
        requested = name if isinstance(name, str) else None
        if isinstance(model, PriceTable):
            price = model.price_for(requested)
            if price is None:
                raise _model_refusal(model, body, requested)
            return price
        json_body = None if body is NOT_JSON else body
        request = PricedRequest(self.scope["method"], self.scope["path"], requested, json_body)
        return model(request)

    def _shape(self, offer: Offer) -> None:
        """``shape_requests``: the body the app gets, within what the payment covers."""
        if self.replay is None:
            return
        tariff = offer.terms.tariff
        shaped = shape_request(
            self.scope["path"], self.replay, tariff.price, tariff.decimals, tariff.max_amount
        )
        if shaped is None:
            return
        self.replay = shaped.body
        if shaped.hide_usage_chunk:
            self.usage_filter = UsageChunkFilter()
        headers = [(k, v) for k, v in self.scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(shaped.body)).encode()))
        self.app_scope = {**self.scope, "headers": headers}

    async def _refuse(self, offer: Offer, reason: str, message: str, status: int) -> None:
        self._count("challenged" if reason == "payment_required" else "refused", reason)
        await send_payment_required(
            self.send, offer, self.resource_url, reason=reason, message=message, status=status
        )

    # -- serving -------------------------------------------------------------------------

    async def _serve(self, offer: Offer, authorization: Authorization) -> None:
        now = time.time()
        settler = self.runtime.settler
        self.end_at = authorization.expires_at - self.config.expiry_margin
        self.offer = offer
        self.authorization = authorization
        self.record = PaymentRecord(
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
            lease_owner=settler.owner,
            lease_until=now + settler.retry.lease_seconds,
        )
        # Durable before the first byte goes out: a payment that was verified is never lost.
        await self.runtime.store.save(self.record)
        settler.expect(self.record.receipt_id)
        root = self.scope.get("root_path", "")
        self.receipt_path = f"{root}{self.config.receipts_path}{self.record.receipt_id}".encode()
        if self.config.on_cap != "end" or authorization.scheme != "upto":
            self.next_cap_check = float("inf")
        self.serving = True
        self.beat_every = settler.retry.lease_seconds / 3
        if self.config.checkpoint_every:
            self.beat_every = min(self.beat_every, self.config.checkpoint_every)
        if self.config.recheck_every:
            self.recheck_at = time.monotonic() + self.config.recheck_every
        self._arm_heartbeat()
        try:
            with self.app_cancel:
                await self.middleware.app(self.app_scope, self._receive, self._send)
        except Exception:
            if self.stopped is None:
                raise
            # The app failed on the StreamCapped its send raised after the answer was ended.
        finally:
            # Also on client disconnect, app failure and cancellation: charge what was served.
            with anyio.CancelScope(shield=True):
                await self._stop_heartbeat()
                if self.stopped is not None and self.held is not None and not self.handed_off:
                    await self._settle_then_send(ended=True)
                if not self.handed_off:
                    await self._hand_off_settlement()
                if self.stopped is not None:
                    await self._ended_early()

    async def _receive(self) -> Message:
        if self.replay is not None:
            body, self.replay = self.replay, None
            return {"type": "http.request", "body": body, "more_body": False}
        if self.early_disconnect is not None:
            return self.early_disconnect
        message = await self.receive()
        limit = self.config.max_request_body
        if message["type"] == "http.request" and len(self.request_body) < limit:
            self.request_body += message.get("body", b"")[: limit - len(self.request_body)]
        return message

    @property
    def forwarded(self) -> int:
        """Bytes of the body sent so far."""
        return self.fed + self.unfed

    def _send(self, message: Message) -> Awaitable[None]:
        # Not a coroutine: most chunks only go into the meter's next batch and on to the
        # server, and the app then awaits the server's own send, with no frame of ours in
        # between. The rest (a full batch, a look at the cap, the start, the end, a held
        # answer) takes _send_slowly.
        if message["type"] == "http.response.body":  # feed_at is 0 unless the fast path may
            body = message.get("body", b"")
            unfed = self.unfed + len(body)
            if unfed < self.feed_at:
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
                if self.config.checkpoint_every == 0:
                    # Before the chunk goes out: what a client has received is on record.
                    await self._checkpoint()
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
                    await self._settle_then_send()
                return
        elif message["type"] == "http.response.start":
            self.status = message["status"]
            headers = [*message.get("headers", ()), (RECEIPT_HEADER, self.receipt_path)]
            if not any(name.lower() == b"cache-control" for name, _ in headers):
                # A paid answer is the payer's alone: no shared cache may hand it to the next
                # caller for free. An app that sets its own policy has chosen otherwise.
                headers.append((b"cache-control", b"no-store"))
            content_type, encoding = _media_type(headers)
            info = ResponseInfo(
                self.status, content_type, encoding, bytes(self.request_body), self.scope["path"]
            )
            self.meter = self._new_meter(info)
            message = {**message, "headers": headers}
            if self._settles_first() and content_type not in _STREAMING_TYPES:
                self.held = [message]
                return
            self.fast = self.meter is not None and self.usage_filter is None
            self._set_feed_at()
        await self.send(message)

    def _settles_first(self) -> bool:
        """Hold this (non-streamed) answer until it is settled? ``settle_before_response``;
        by default only for ``exact``: its flat amount is known before the answer is, so
        settling first costs the payer nothing and protects the seller (as the x402 SDK's
        servers do), while an ``upto`` charge waits on the whole body."""
        chosen = self.config.settle_before_response
        return self.authorization.scheme == "exact" if chosen is None else chosen

    def _set_feed_at(self) -> None:
        if not self.fast or self.config.checkpoint_every == 0:
            self.feed_at = 0
        else:  # the unfed bytes at which a batch is full or the cap is due a look
            due = self.next_cap_check - self.fed
            self.feed_at = int(min(METER_BATCH_BYTES, max(due, 0)))

    # -- metering ------------------------------------------------------------------------

    def _new_meter(self, response: ResponseInfo) -> Meter | None:
        try:
            return self.config.meter(response)
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

    def _usage(self) -> Usage:
        self._feed_pending()
        if self.meter is not None:
            try:
                return self.meter.finish()
            except Exception:
                logger.exception("meter failed at the end of the body")
        return Usage(input_source="estimated", output_source="estimated")

    def _snapshot(self) -> Usage | None:
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

        ``_send`` calls it once ``forwarded`` reaches ``next_cap_check``. The looks are half
        again as far apart as the stream is long (at least 2 KiB), so that a long answer
        pays for few of them; once the count is taken, the next one comes no later than
        halfway to where, at the rate so far, the maximum would be reached: a stream that
        goes on at a steady rate is ended within 2 KiB past it.
        """
        if self.config.on_cap != "end" or self.authorization.scheme != "upto":
            return False
        forwarded = self.forwarded
        self.next_cap_check = forwarded + max(CAP_LOOK_BYTES, forwarded // 2)
        # A token is at least one byte: until the bytes seen could pay for the maximum at the
        # highest price, the count cannot have reached it, and nothing needs counting.
        tariff = self.offer.terms.tariff
        maximum = self.authorization.max_amount
        bytes_seen = forwarded + len(self.request_body)
        if to_atomic(tariff.price.highest * bytes_seen, tariff.decimals) < maximum:
            return False
        usage = self._snapshot()
        if usage is None:
            return False
        exact = tariff.charge(usage.input_tokens, usage.output_tokens, usage.cached_input_tokens)
        if exact >= maximum:
            return True
        if exact > 0:  # the bytes at which the rate so far reaches the maximum, halfway there
            halfway = forwarded + (forwarded * maximum // exact - forwarded) // 2
            self.next_cap_check = min(self.next_cap_check, max(forwarded + CAP_LOOK_BYTES, halfway))
        return False

    def _amount(self, usage: Usage) -> int:
        if self.status is None or self.status >= 400:
            return 0  # the app failed: nothing was served
        if self.authorization.scheme == "exact":
            return self.authorization.max_amount  # a flat price
        tariff = self.offer.terms.tariff
        charge = tariff.charge(usage.input_tokens, usage.output_tokens, usage.cached_input_tokens)
        return min(charge, self.authorization.max_amount)

    def _counted(self, record: PaymentRecord, usage: Usage, **changes: Any) -> PaymentRecord:
        return dataclasses.replace(
            record,
            amount=self._amount(usage),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            usage_source=usage_source(usage),
            updated_at=time.time(),
            **changes,
        )

    async def _checkpoint(self) -> None:
        """Record the running count and charge, and extend this server's lease on the row."""
        usage = self._snapshot()
        until = time.time() + self.runtime.settler.retry.lease_seconds
        if usage is not None:
            self.record = self._counted(self.record, usage, lease_until=until)
        else:
            self.record = dataclasses.replace(
                self.record, lease_until=until, updated_at=time.time()
            )
        self.checkpointed_at = time.monotonic()
        await self.runtime.store.save(self.record)

    # The heartbeat checkpoints the running count every ``checkpoint_every`` seconds and
    # keeps the row leased while the answer runs, even when no chunk moves (at least every
    # third of the lease). If this server dies, the lease runs out and another worker settles
    # the row for its last checkpoint: what had been served then (never more than was
    # served). A timer, not a task sleeping in a loop, nor a clock read per chunk: most
    # answers end before it ever fires, and a timer costs a fraction of a task to start and
    # to stop. (``checkpoint_every=0`` checkpoints before each chunk, in _send_slowly.)

    def _arm_heartbeat(self) -> None:
        # While a re-check is in flight the next one is not due (it starts at a later beat).
        recheck = self.recheck_at if self.recheck_task is None else float("inf")
        delay = min(self.beat_every, self.end_at - time.time(), recheck - time.monotonic())
        self.heartbeat_timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._beat)

    def _beat(self) -> None:
        self.heartbeat_timer = None
        if self.serving:
            self.heartbeat_task = asyncio.ensure_future(self._heartbeat())

    async def _heartbeat(self) -> None:
        if time.time() >= self.end_at:  # settle while the authorization can still be settled
            self._stop("authorization_expiring")
            return
        if self.recheck_task is None and time.monotonic() >= self.recheck_at:
            self.recheck_at = time.monotonic() + self.config.recheck_every
            self.recheck_task = asyncio.ensure_future(self._recheck())
        await self._checkpoint()  # if it fails, the heartbeat stops (and the lease runs out)
        if self.serving:
            self._arm_heartbeat()

    async def _stop_heartbeat(self) -> None:
        self.serving = False
        if self.heartbeat_timer is not None:
            self.heartbeat_timer.cancel()
            self.heartbeat_timer = None
        tasks = [t for t in (self.heartbeat_task, self.recheck_task) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # While an answer streams, the payer can still make its authorization unsettleable
    # (invalidate the nonce, move the funds, revoke the approval). Every ``recheck_every``
    # seconds the heartbeat has the facilitator verify the same payload against the
    # server's requirements again, in a task of its own so that a slow facilitator never
    # delays a checkpoint or the lease. Once the answer is no longer going to be paid (or
    # the facilitator has not answered twice in a row, or the deadline is near) it ends.

    async def _recheck(self) -> None:
        """Verify the authorization again; end the answer if it would no longer settle."""
        try:
            with anyio.fail_after(self.config.recheck_every):
                result = await self.runtime.facilitator.verify(
                    self.authorization.payload, self.authorization.requirements
                )
        except (FacilitatorUnavailableError, TimeoutError) as exc:
            self.recheck_misses += 1
            logger.warning("re-check of %s got no answer: %s", self.record.receipt_id, exc)
            if self.recheck_misses > RECHECK_MISSES_TOLERATED:
                self._stop("facilitator_unavailable")
            return
        finally:
            self.recheck_task = None
        self.recheck_misses = 0
        if not result.is_valid:
            reason = result.invalid_reason or "payment_invalid"
            if is_voiding(reason):
                self.voided = reason
            self._stop(PAYER_VOIDED if self.voided else "payment_invalid", reason)

    def _stop(self, reason: str, detail: str | None = None) -> None:
        """End the answer now; ``_serve`` then charges what was served and settles it.

        The app's next ``send`` raises ``StreamCapped`` (every chunk now takes the slow path,
        which checks), and the app is cancelled, since it may be waiting rather than sending.
        """
        if self.stopped is not None or not self.serving:
            return
        self.stopped = reason
        self.capped, self.fast, self.feed_at = True, False, 0
        self.app_cancel.cancel()
        logger.warning("ended %s early: %s", self.record.receipt_id, detail or reason)

    async def _ended_early(self) -> None:
        """Remember a payer that voided; close the answer (or refuse, if none had started)."""
        if self.voided is not None:
            await remember_voided_payer(
                self.runtime.store,
                self.authorization.payer,
                seconds=self._voided_for,
                reason=self.voided,
                receipt_id=self.record.receipt_id,
            )
        if self.held is not None:
            return  # _settle_then_send answered
        assert self.stopped is not None
        with anyio.move_on_after(END_SEND_SECONDS):
            try:
                if self.status is None:
                    message = f"the answer was ended before it started: {self.stopped}"
                    await self._refuse(self.offer, self.stopped, message, 402)
                else:
                    await self.send({"type": "http.response.body", "body": b"", "more_body": False})
            except Exception:  # the answer had already ended, or the client has gone
                logger.debug("could not close %s", self.record.receipt_id, exc_info=True)

    # -- settlement ----------------------------------------------------------------------

    def _charged(self) -> PaymentRecord:
        usage = self._usage()
        self._count("served")
        if self.config.metrics is not None:
            self.config.metrics.tokens(usage.input_tokens, usage.output_tokens)
        return self._counted(self.record, usage, state=LedgerState.TO_SETTLE)

    async def _hand_off_settlement(self) -> None:
        self.handed_off = True
        record = self._charged()
        await self.runtime.store.save(record)
        self.runtime.settler.submit(record)

    async def _settle_then_send(self, *, ended: bool = False) -> None:
        """``settle_before_response``: settle first, then send the held answer with the result.

        ``ended``: the answer was ended early; what was held is sent as the whole answer.
        """
        assert self.held is not None
        if ended:
            last = self.held[-1]
            if last["type"] == "http.response.body":
                self.held[-1] = {**last, "more_body": False}
            else:
                self.held.append({"type": "http.response.body", "body": b"", "more_body": False})
        self.handed_off = True
        record = self._charged()
        await self.runtime.store.save(record)
        settled = await self.runtime.settler.settle(record, attempts=1)
        start, *bodies = self.held
        if settled.state is LedgerState.FAILED:
            await self._refuse(
                self.offer, "settlement_failed", settled.error or "settlement failed", 402
            )
            return
        if settled.state is LedgerState.SETTLED:  # not NOT_CHARGED: no settlement to report
            v2 = settled.x402_version == 2
            result = SettleResponse(
                success=True,
                transaction=settled.transaction or "",
                network=settled.network if v2 else v1_network_name(settled.network),
                payer=settled.payer,
                amount=str(settled.amount or 0),
            )
            name = PAYMENT_RESPONSE if v2 else X_PAYMENT_RESPONSE
            header = (name.encode(), settle_response_header(result))
            start = {**start, "headers": [*start["headers"], header]}
        # Otherwise nothing was charged (the receipt says so), or the facilitator is
        # unreachable: the sweeper keeps trying; answer anyway.
        await self.send(start)
        for body in bodies:
            await self.send(body)
