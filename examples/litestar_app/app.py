"""The FastAPI example's API, the Litestar way: ``uvicorn examples.litestar_app.app:app``.

- ``X402MeterPlugin`` meters ``POST /v1/chat/completions`` per token (``upto``) at the
  requested model's price, and serves the receipts;
- ``POST /premium/v1/chat/completions`` has its own price and cap with ``@metered`` (under
  ``@post``);
- ``POST /flat/v1/chat/completions`` costs a flat price per request and model, paid with
  ``exact``: a second meter (``X402MeterMiddleware``) as the middleware of its own ``Router``;
- ``GET /v1/models`` lists the models and their prices (free).

Configured by the environment variables of ``examples/common/settings.py``.
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Litestar, Request, Router, get, post
from litestar.response import Stream

from examples.common.settings import Settings, price_table
from examples.common.upstream import Upstream, upstream_from
from x402_meter import PaymentStore, metered
from x402_meter.integrations.litestar import X402MeterMiddleware, X402MeterPlugin
from x402_meter.store import open_store

CHAT_PATH: Final = "/v1/chat/completions"
PREMIUM_PATH: Final = "/premium/v1/chat/completions"
FLAT_PREFIX: Final = "/flat"


async def _relay(upstream: Upstream, request: Request[Any, Any, Any]) -> Stream:
    answer = await upstream.chat_completions(await request.body())
    return Stream(answer.body, status_code=answer.status_code, media_type=answer.media_type)


def create_app(
    settings: Settings, *, store: PaymentStore | None = None, upstream: Upstream | None = None
) -> Litestar:
    """The example app. ``store`` and ``upstream`` default to what ``settings`` name."""
    ledger = store if store is not None else open_store(settings.store_url)
    model = upstream or upstream_from(settings.upstream_base_url, settings.upstream_api_key)
    shared = settings.payment_options(ledger)  # one ledger: every receipt is served at one path
    per_token: dict[str, Any] = {
        **shared,
        "price_per_token": price_table(settings.prices),
        "max_tokens": settings.max_tokens,
        "routes": [f"POST {CHAT_PATH}"],
        "shape_requests": True,
        "description": "chat completion, per token",
    }
    flat_price: dict[str, Any] = {
        **shared,
        "price_per_token": price_table(settings.flat_prices, per_answer=True),
        "max_tokens": 1,  # with exact: the price of one request
        "schemes": ("exact",),
        "routes": [f"POST {FLAT_PREFIX}{CHAT_PATH}"],
        "description": "one chat answer at a flat price",
    }

    @post(CHAT_PATH, status_code=200)
    async def chat(request: Request[Any, Any, Any]) -> Stream:
        return await _relay(model, request)

    @post(PREMIUM_PATH, status_code=200)
    @metered(
        price_per_token=settings.premium_price,
        max_tokens=settings.premium_max_tokens,
        description="premium: its own price per token and cap",
    )
    async def premium_chat(request: Request[Any, Any, Any]) -> Stream:
        return await _relay(model, request)

    @post(CHAT_PATH, status_code=200)
    async def flat_chat(request: Request[Any, Any, Any]) -> Stream:
        return await _relay(model, request)

    @get("/v1/models", sync_to_thread=False)
    def models() -> dict[str, Any]:
        return {"object": "list", "data": settings.models()}

    # Not DefineMiddleware(X402Meter, **options): Litestar deep-copies a Router with its
    # options, and the copy of the store would be another ledger.
    flat_meter = X402MeterMiddleware(**flat_price)
    flat = Router(FLAT_PREFIX, route_handlers=[flat_chat], middleware=[flat_meter])

    async def shutdown() -> None:
        # Litestar hands middleware no lifespan events: let settlements in flight finish.
        await flat_meter.drain()  # the plugin drains its own meter
        await model.aclose()

    return Litestar(
        route_handlers=[chat, premium_chat, models, flat],
        plugins=[X402MeterPlugin(**per_token)],
        on_shutdown=[shutdown],
    )


def __getattr__(name: str) -> Litestar:
    """``app``, built from the environment when uvicorn first asks for it."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = create_app(Settings.from_env())
    globals()["app"] = app
    return app
