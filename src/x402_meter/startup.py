"""What a meter says when its server starts: a bad option stops the server, loudly.

Starlette and FastAPI build their middleware on the first ASGI call they get (in
``build_middleware_stack``), which is the lifespan's. An exception raised there is taken by
uvicorn for an app that does not speak the lifespan protocol: the server starts anyway and
every request raises it again, as a bare 500 with the message hidden in a traceback. So a
meter built there with an invalid option does not raise: it stands in as a
``MisconfiguredMeter``, which fails the lifespan startup with the option's message (uvicorn
then exits non-zero) and, where no lifespan carries it, logs it once as an ERROR and refuses
every request with 500 ``configuration_error``: never the app's answer, never free.

Litestar builds route middleware when the app is created, so there a bad option raises at
once; but it routes before middleware runs, so a meter given as route middleware never sees
its receipts path: ``wraps_litestar_route`` lets the meter refuse that set-up at once.
"""

from __future__ import annotations

import inspect
import logging
import sys
from typing import Any, Final

from starlette.types import Receive, Scope, Send

from x402_meter.errors import ConfigurationError
from x402_meter.responses import send_json

logger = logging.getLogger("x402_meter")

LAZY_BUILDERS: Final = frozenset({"build_middleware_stack"})
"""Where Starlette and FastAPI build middleware, inside their first ASGI call."""
_FRAMES_LOOKED_AT: Final = 8
"""Enough for the constructor's caller through a few subclass ``__init__`` s."""
LITESTAR_NEEDS_PLUGIN: Final = (
    "X402Meter is Litestar route middleware here (DefineMiddleware(X402Meter, ...)), and "
    "Litestar routes before middleware runs: the receipts path would never reach the meter, "
    "and every X-Payment-Receipt link would 404. Use Litestar(plugins=[X402MeterPlugin("
    "...)]) from x402_meter.integrations.litestar (it serves receipts), and "
    "X402MeterMiddleware(...) for a Router's own meter"
)


def built_lazily() -> bool:
    """Whether a framework is building its middleware stack inside an ASGI call, right now.

    Only asked when an option is invalid: ``X402Meter(app, ...)`` called by the user still
    raises at once.
    """
    frame = inspect.currentframe()
    for _ in range(_FRAMES_LOOKED_AT):
        if frame is None:
            return False
        if frame.f_code.co_name in LAZY_BUILDERS:
            return True
        frame = frame.f_back
    return False


def wraps_litestar_route(app: Any) -> bool:
    """Whether ``app`` is a Litestar route's handler (through Litestar's own middleware).

    Litestar builds route middleware around ``route.handle``, a bound method of the route.
    """
    routes = sys.modules.get("litestar.routes.base")
    if routes is None:  # Litestar is not even imported: this is no Litestar route
        return False
    node = app
    for _ in range(32):
        if node is None:
            return False
        if isinstance(getattr(node, "__self__", None), routes.BaseRoute):
            return True
        node = getattr(node, "app", None)
    return False


class MisconfiguredMeter:
    """Stands in for a meter built lazily with an invalid option: fails closed, loudly."""

    def __init__(self, error: ConfigurationError) -> None:
        self.message = (
            f"X402Meter cannot start: {error}. Fix this option where X402Meter is added "
            "(app.add_middleware(X402Meter, ...)); until then every request is refused."
        )
        self.reported = False
        """Whether the server was told (the lifespan startup failed, or the ERROR logged)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.reported = True  # the server logs the message and stops
                await send({"type": "lifespan.startup.failed", "message": self.message})
            return
        if not self.reported:  # no lifespan (``--lifespan off``): the first request tells
            self.reported = True
            logger.error(self.message)
        if scope["type"] == "http":
            # The option itself stays in the server's log: clients learn only that it is so.
            error = "the server's payment middleware is misconfigured; see the server log"
            await send_json(send, 500, {"reason": ConfigurationError.reason, "error": error})
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1011})
