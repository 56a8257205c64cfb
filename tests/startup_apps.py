"""Apps the startup tests serve in real uvicorn processes (``uvicorn --factory``).

``$X402_STARTUP_OPTIONS`` (JSON) are the meter's options, on top of valid ones that reach
nothing at startup; a number in it arrives as a float, as a mistyped price would.
``$X402_STARTUP_METERED`` set: the chat endpoint is ``@metered``. The chat endpoint answers
``APP_ANSWER``, so a test can tell when a request reached the app.
"""

from __future__ import annotations

import json
import os
from typing import Any, cast

from fastapi import FastAPI
from litestar import Litestar
from litestar import post as litestar_post
from litestar.middleware import DefineMiddleware
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from x402_meter import X402Meter, metered
from x402_meter.integrations.litestar import X402MeterPlugin

APP_ANSWER = {"answer": "from the app"}
OPTIONS_ENV = "X402_STARTUP_OPTIONS"
METERED_ENV = "X402_STARTUP_METERED"
VALID: dict[str, Any] = {
    "pay_to": "0x" + "33" * 20,
    "price_per_token": "0.000002",
    "facilitator_url": "http://127.0.0.1:9",  # never asked at startup
    "store": "memory://",
}


def options() -> dict[str, Any]:
    return {**VALID, **json.loads(os.environ.get(OPTIONS_ENV, "{}"))}


def _mark(endpoint: Any) -> Any:
    return metered()(endpoint) if os.environ.get(METERED_ENV) else endpoint


def starlette() -> Starlette:
    async def chat(request: Request) -> JSONResponse:
        return JSONResponse(APP_ANSWER)

    app = Starlette(routes=[Route("/v1/chat/completions", _mark(chat), methods=["POST"])])
    app.add_middleware(X402Meter, **options())
    return app


def fastapi() -> FastAPI:
    app = FastAPI()

    async def chat() -> dict[str, str]:
        return APP_ANSWER

    app.post("/v1/chat/completions")(_mark(chat))
    app.add_middleware(X402Meter, **options())
    return app


def _litestar_chat() -> Any:
    async def chat() -> dict[str, str]:
        return APP_ANSWER

    return litestar_post("/v1/chat/completions", status_code=200)(_mark(chat))


def litestar_plugin() -> Litestar:
    return Litestar(route_handlers=[_litestar_chat()], plugins=[X402MeterPlugin(**options())])


def litestar_define_middleware() -> Litestar:
    return Litestar(
        route_handlers=[_litestar_chat()],
        middleware=[DefineMiddleware(cast(Any, X402Meter), **options())],
    )
