"""Litestar: ``Litestar(plugins=[X402MeterPlugin(pay_to=..., price_per_token=..., ...)])``.

Litestar runs app-level middleware per route handler, after routing. The plugin adds
``X402Meter`` that way (instances share one runtime, see ``x402_meter.runtime``) and adds a
route for the receipts path, so receipt requests reach a handler whose middleware answers
them. Mark handlers with ``@metered`` (under ``@post``) or ``opt={"x402_meter": ...}``, or
list them in ``routes``.
"""

from __future__ import annotations

from typing import Unpack

import anyio
from litestar import get
from litestar.config.app import AppConfig
from litestar.middleware import DefineMiddleware
from litestar.plugins import InitPluginProtocol

from x402_meter.config import MeterConfig, MeterOptions
from x402_meter.middleware import X402Meter
from x402_meter.runtime import runtime_for


class X402MeterPlugin(InitPluginProtocol):
    def __init__(self, **options: Unpack[MeterOptions]) -> None:
        """``options`` are ``X402Meter``'s keyword arguments, checked now."""
        MeterConfig.create(**options)
        self.options = options

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        # X402Meter is typed with Starlette's ASGI aliases; Litestar's TypedDicts are narrower.
        app_config.middleware.append(DefineMiddleware(X402Meter, **self.options))  # type: ignore[arg-type]
        receipts_path = str(self.options.get("receipts_path", "/x402/receipts/"))

        @get(f"{receipts_path}{{receipt_id:str}}", include_in_schema=False, sync_to_thread=False)
        def receipt() -> None:  # pragma: no cover - X402Meter answers first
            raise RuntimeError("X402Meter serves receipts; it is missing from this handler's stack")

        app_config.route_handlers.append(receipt)
        # Middleware sees no lifespan in Litestar: let settlements in flight finish at shutdown.
        app_config.on_shutdown.append(self.drain)
        return app_config

    async def drain(self) -> None:
        """Wait (up to 30 s) for this meter's settlements in flight; stop its sweeper."""
        with anyio.move_on_after(30):
            await runtime_for(MeterConfig.create(**self.options)).settler.aclose()
