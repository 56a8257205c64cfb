"""An OpenAI-compatible chat API that charges per token with x402, on FastAPI.

``uvicorn examples.fastapi_app.app:app`` (configured by environment variables, see
``examples/common/settings.py`` and this example's README.md) serves:

- ``POST /v1/chat/completions``: metered per token (``upto``, and sessions where
  ``X402_SESSIONS`` allows them: on the local chain by default), at the requested model's
  price (``X402_PRICES``), streaming or not;
- ``POST /premium/v1/chat/completions``: the same answer, marked with ``@metered`` for its
  own price and cap;
- ``POST /flat/v1/chat/completions``: a flat price per request and model, paid with
  ``exact``, from a second ``X402Meter`` around its own sub-app;
- ``GET /v1/models``: the models and their prices (free);
- ``GET /x402/receipts/{id}``: receipts (served by the middleware);
- ``GET /chat``: a chat page that pays from the browser (``chat.py``).

Browsers on the origins in ``X402_CORS_ORIGINS`` may call it and pay (CORS, with the headers
of ``x402_meter.cors``).

The answers come from the offline stub model, or from ``UPSTREAM_BASE_URL`` when it is set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from examples.common.settings import Settings, price_table
from examples.common.upstream import Upstream, upstream_from
from examples.fastapi_app.chat import chat_router
from x402_meter import PaymentStore, X402Meter, metered
from x402_meter.cors import ALLOW_HEADERS, EXPOSE_HEADERS
from x402_meter.store import open_store

CHAT_PATH: Final = "/v1/chat/completions"
PREMIUM_PATH: Final = "/premium/v1/chat/completions"
FLAT_PATH: Final = "/flat/v1/chat/completions"


async def _relay(upstream: Upstream, request: Request) -> StreamingResponse:
    answer = await upstream.chat_completions(await request.body())
    return StreamingResponse(
        answer.body, status_code=answer.status_code, media_type=answer.media_type
    )


def create_app(
    settings: Settings, *, store: PaymentStore | None = None, upstream: Upstream | None = None
) -> FastAPI:
    """The example app. ``store`` and ``upstream`` default to what ``settings`` name."""
    ledger = store if store is not None else open_store(settings.store_url)
    model = upstream or upstream_from(settings.upstream_base_url, settings.upstream_api_key)
    shared = settings.payment_options(ledger)  # one ledger: every receipt is served at one path

    # The flat-priced route: its own little app behind its own meter, so that neither meter
    # sees the other's routes. ``exact`` moves a fixed amount; with max_tokens=1 and a free
    # prompt the "price per token" is the price of one request, per model.
    flat = FastAPI(title="flat-priced chat")

    @flat.post(FLAT_PATH)
    async def flat_chat(request: Request) -> StreamingResponse:
        return await _relay(model, request)

    flat_meter = X402Meter(
        flat,
        **shared,
        price_per_token=price_table(settings.flat_prices, per_answer=True),
        max_tokens=1,
        schemes=("exact",),
        routes=[f"POST {FLAT_PATH}"],
        description="one chat answer at a flat price",
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # The flat meter is a route's endpoint, not middleware: it gets no lifespan events,
        # so its settlements in flight are waited for here.
        await flat_meter.runtime.settler.aclose()
        await model.aclose()

    app = FastAPI(title="x402-meter FastAPI example", lifespan=lifespan)

    @app.post(CHAT_PATH)
    async def chat(request: Request) -> StreamingResponse:
        return await _relay(model, request)

    @app.post(PREMIUM_PATH)
    @metered(
        price_per_token=settings.premium_price,
        max_tokens=settings.premium_max_tokens,
        description="premium: its own price per token and cap",
    )
    async def premium_chat(request: Request) -> StreamingResponse:
        return await _relay(model, request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": settings.models()}

    app.include_router(chat_router(settings))

    # A route whose endpoint is an ASGI app (not a Mount: the receipt path stays /x402/...).
    app.router.routes.append(Route(FLAT_PATH, flat_meter, methods=["POST"]))
    app.add_middleware(
        X402Meter,
        **shared,
        price_per_token=price_table(settings.prices),
        max_tokens=settings.max_tokens,
        routes=[f"POST {CHAT_PATH}"],
        schemes=settings.per_token_schemes,
        shape_requests=True,  # ask the model for its usage report; never let it run past the cap
        description="chat completion, per token",
    )
    if settings.cors_origins:
        # Added last, so outermost: preflights are answered here (never metered, never
        # reaching an endpoint) and the meter's own 402s and receipts get the headers too.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=ALLOW_HEADERS,
            expose_headers=EXPOSE_HEADERS,
        )
    return app


def __getattr__(name: str) -> FastAPI:
    """``app``, built from the environment when uvicorn first asks for it."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = create_app(Settings.from_env())
    globals()["app"] = app
    return app
