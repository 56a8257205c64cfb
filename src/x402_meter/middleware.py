"""``X402Meter``: the pay-per-token ASGI middleware.

A thin dispatcher, as Starlette's ``GZipMiddleware`` is: each metered request gets a fresh
``PaidExchange`` (``x402_meter.pipeline``), which holds its state:

1. no payment header: 402 with the requirements (the most the request can cost);
2. decode strictly, check locally against the server's own requirements;
3. reserve the authorization (single use, in the shared store), have its scheme admit it
   (the facilitator verifies);
4. record it in the ledger, then stream the app's answer through untouched while a meter
   counts tokens; a heartbeat checkpoints the running count and keeps the row leased, has
   the scheme re-check the authorization, and ends the answer if it would no longer be paid
   (voided, or its deadline near);
5. when the body closes (or the client leaves, or the app fails) charge what the scheme
   says (upto: the count, capped at the authorized maximum; exact: the flat amount) and
   settle it (in the background, or first for a held answer); the receipt tells the outcome.

docs/design/architecture.md draws the flow and the modules it passes through.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final, Self, TypeAlias, Unpack, cast

import anyio
from starlette.datastructures import URL
from starlette.types import Message, Receive, Scope, Send

from x402_meter.config import MeterConfig, MeterOptions
from x402_meter.errors import ConfigurationError, StreamCapped
from x402_meter.metering import get_tokenizer
from x402_meter.pipeline import PaidExchange
from x402_meter.pipeline.exchange import END_SEND_SECONDS
from x402_meter.pipeline.heartbeat import RECHECK_MISSES_TOLERATED
from x402_meter.pipeline.ledger_records import usage_source
from x402_meter.pipeline.receipts import ReceiptEndpoint
from x402_meter.pipeline.refunds import RefundDoor
from x402_meter.pipeline.request import NOT_JSON
from x402_meter.pipeline.response_tap import CAP_LOOK_BYTES, METER_BATCH_BYTES, RECEIPT_HEADER
from x402_meter.routing import RouteTable
from x402_meter.runtime import MeterRuntime
from x402_meter.schemes.upto import PERMIT2_ALLOWANCE_REQUIRED
from x402_meter.startup import (
    LITESTAR_NEEDS_PLUGIN,
    MisconfiguredMeter,
    built_lazily,
    wraps_litestar_route,
)

logger = logging.getLogger("x402_meter")

AnyASGIApp: TypeAlias = Callable[[Any, Any, Any], Awaitable[None]]
"""Any ASGI app, whichever framework's type aliases it was written with."""

_RESOURCE_URLS_KEPT: Final = 256
_IN_THE_RUNTIME: Final = cast(MeterOptions, {})
"""No options: a meter given a runtime takes them from it (``MeterOptions`` requires
``pay_to`` and ``price_per_token``, for meters that are given options)."""

__all__ = [
    "CAP_LOOK_BYTES",
    "END_SEND_SECONDS",
    "METER_BATCH_BYTES",
    "NOT_JSON",
    "PERMIT2_ALLOWANCE_REQUIRED",
    "RECEIPT_HEADER",
    "RECHECK_MISSES_TOLERATED",
    "AnyASGIApp",
    "StreamCapped",
    "X402Meter",
    "usage_source",
    "warm_up_tokenizer",
]


class X402Meter:
    """Charge per token for the routes it meters, with x402 ``upto`` payments.

    ``app.add_middleware(X402Meter, pay_to=..., price_per_token=..., ...)`` on Starlette or
    FastAPI; ``X402Meter(app, ...)`` around any ASGI app. Routes are metered when they match
    ``routes`` (``"POST /v1/chat/completions"``, ``"/v1/answer/*"``) or are marked with
    ``@metered``. ``MeterConfig`` declares and documents every option.
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
        self.receipts = ReceiptEndpoint(self.runtime)
        self.refunds = RefundDoor(app, self.runtime, self.route_table, self.resource_url)

    @classmethod
    def sharing(cls, app: AnyASGIApp, runtime: MeterRuntime) -> Self:
        """A meter around ``app`` that shares ``runtime`` (its options, store, settlement
        worker): ``X402Meter(app, runtime=runtime)``, typed."""
        return cls(app, runtime=runtime, **_IN_THE_RUNTIME)

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
            if self.receipts.serves(scope):
                await self.receipts(scope, send)
                return
            spec = self.route_table.spec_for(scope)
            if spec is not None:
                self.runtime.settler.ensure_sweeper()
                exchange = PaidExchange(
                    self.app,
                    self.runtime,
                    spec,
                    scope,
                    receive,
                    send,
                    lambda: self.resource_url(scope),
                )
                await exchange.run()
                return
            elsewhere = self.refunds.metered_elsewhere(scope)
            if elsewhere is not None:
                await self.refunds.enter(elsewhere, scope, receive, send)
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


def warm_up_tokenizer() -> None:
    """Load the fallback tokenizer's vocabulary on a thread now, not in a request later."""
    import threading

    def load() -> None:
        try:
            get_tokenizer()
        except Exception:  # the optional extra is missing: estimates use bytes / 4
            logger.info("no offline tokenizer (pip install 'x402-meter[tokenizer]')")

    threading.Thread(target=load, name="x402-tokenizer-warm-up", daemon=True).start()
