"""Litestar: ``Litestar(plugins=[X402MeterPlugin(pay_to=..., price_per_token=..., ...)])``.

Litestar runs app-level middleware per route handler, after routing. The plugin adds
``X402Meter`` that way (one runtime, created here, handed to each route's meter) and adds a
route for the receipts path, so receipt requests reach a handler whose middleware answers
them. Mark handlers with ``@metered`` (under ``@post``) or ``opt={"x402_meter": ...}``, or
list them in ``routes``. For a ``Router``'s own meter, use ``X402MeterMiddleware``.
``DefineMiddleware(X402Meter, ...)`` is refused: Litestar routes before middleware runs, so
nothing would serve that meter's receipts (``x402_meter.startup``).

With sessions on, the plugin also puts the meter's refund door (``RefundDoor``) in front of
Litestar's router, at startup: a session's refund, and the x402 clients' ``GET`` probe for
it, come to the path of a metered ``POST`` route, where the router would answer 405 before
any middleware runs (``RefundsBeforeRouting``).

Options are passed on as they are, never copied: a store object given here is the one every
route writes to. (Litestar deep-copies a ``Router`` when it is registered, and with it the
arguments of its ``DefineMiddleware(X402Meter, store=...)``: the routes would write to a
copy of the store, another ledger.)
"""

from __future__ import annotations

from typing import Any, Self, Unpack, cast

import anyio
from litestar import Litestar, get
from litestar.config.app import AppConfig
from litestar.plugins import InitPluginProtocol
from litestar.types import ASGIApp
from starlette.datastructures import URL
from starlette.types import Receive, Scope, Send

from x402_meter.config import MeterConfig, MeterOptions
from x402_meter.middleware import X402Meter, logger
from x402_meter.pipeline.refunds import AnyASGIApp, RefundDoor
from x402_meter.routing import NOTHING_METERED, RouteTable, metered_endpoint_found
from x402_meter.runtime import MeterRuntime


class _RoutedMeter(X402Meter):
    """``X402Meter`` as the plugin builds it: ``X402MeterPlugin`` routes its receipts path."""

    receipts_routed = True


class X402MeterMiddleware:
    """``X402Meter`` as Litestar middleware: ``Router(..., middleware=[X402MeterMiddleware(
    pay_to=..., store=store, ...)])``.

    Builds one ``X402Meter`` per route, each given the one runtime built here from the very
    options given here; Litestar's copies of routers and handlers get this object itself
    (``copy`` and ``deepcopy`` return it), so a store object is shared, not copied.
    """

    def __init__(self, **options: Unpack[MeterOptions]) -> None:
        """``options`` are ``X402Meter``'s keyword arguments, checked now."""
        self.runtime = MeterRuntime(MeterConfig(**options))

    def __call__(self, app: ASGIApp) -> ASGIApp:
        # X402Meter is typed with Starlette's ASGI aliases; Litestar's TypedDicts are narrower.
        return cast(ASGIApp, _RoutedMeter.sharing(app, self.runtime))

    async def drain(self) -> None:
        """Wait (up to 30 s) for this meter's settlements in flight; stop its sweeper."""
        with anyio.move_on_after(30):
            await self.runtime.settler.aclose()

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        return self


def _resource_url(scope: Scope) -> str:
    return str(URL(scope=scope))


class RefundsBeforeRouting:
    """A Litestar app's ASGI handler with the meter's refund door in front of its router.

    Litestar routes first: a ``GET`` to a ``POST``-only handler is answered 405 by its router,
    and no middleware of the handler runs. A request whose own method is not metered at its
    path, but another method is (as the route meters' table, asking Litestar's router, says),
    goes through the door instead: a refund is the meter's, the probe goes to Litestar and
    its 404 or 405 becomes the 402, anything else is Litestar's. Every other request goes to
    Litestar untouched, and its route meters meter it.
    """

    def __init__(self, handler: AnyASGIApp, runtime: MeterRuntime, app: Litestar) -> None:
        self.handler = handler
        self.route_table = RouteTable(runtime.config.routes, app)
        self.door = RefundDoor(handler, runtime, self.route_table, _resource_url)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.route_table.spec_for(scope) is None:
            elsewhere = self.door.metered_elsewhere(scope)
            if elsewhere is not None:
                await self.door.enter(elsewhere, scope, receive, send)
                return
        await self.handler(scope, receive, send)


class X402MeterPlugin(InitPluginProtocol):
    def __init__(self, **options: Unpack[MeterOptions]) -> None:
        """``options`` are ``X402Meter``'s keyword arguments, checked now."""
        self.middleware = X402MeterMiddleware(**options)
        self.runtime = self.middleware.runtime

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.middleware.append(self.middleware)
        receipts_path = self.runtime.config.receipts_path

        @get(f"{receipts_path}{{receipt_id:str}}", include_in_schema=False, sync_to_thread=False)
        def receipt() -> None:  # pragma: no cover - X402Meter answers first
            raise RuntimeError("X402Meter serves receipts; it is missing from this handler's stack")

        app_config.route_handlers.append(receipt)
        # Middleware sees no lifespan in Litestar: let settlements in flight finish at shutdown.
        app_config.on_shutdown.append(self.middleware.drain)
        app_config.on_startup.append(self.check_routes)
        if self.runtime.channels is not None:
            app_config.on_startup.append(self.open_refund_door)
        return app_config

    def open_refund_door(self, app: Litestar) -> None:
        """At startup: put the refund door in front of the app's router (once).

        Litestar offers no hook around its router, and builds its ASGI handler after the
        plugins' ``on_app_init``: the handler is wrapped here, before the first request. An
        app served without lifespan does without (its probe keeps Litestar's 405).
        """
        handler = app.asgi_handler
        if not isinstance(handler, RefundsBeforeRouting):
            app.asgi_handler = cast(ASGIApp, RefundsBeforeRouting(handler, self.runtime, app))

    def check_routes(self, app: Litestar) -> None:
        """At startup: warn when no ``routes`` are given and no handler is ``@metered``."""
        if not self.runtime.config.routes and metered_endpoint_found(app) is False:
            logger.warning(NOTHING_METERED)

    async def drain(self) -> None:
        """Wait (up to 30 s) for this meter's settlements in flight; stop its sweeper."""
        await self.middleware.drain()
