"""The chat page (``GET /chat``): a paywalled chat that pays from the browser.

The page's script (``chat_page/chat.mjs``, bundled from npm with the official x402 client
``@x402/fetch`` + ``@x402/evm`` by ``npm run build:chat``) signs every payment in the
browser, with an injected wallet (EIP-1193) or, on the local chain, one of anvil's public
dev accounts. This server holds no key: it serves the page, its script, and a free
``GET /chat/config`` that tells the page what is on sale and how to read its balance. The
page may be served from another origin (``?api=`` names this API; allow that origin with
``X402_CORS_ORIGINS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from examples.common.settings import Settings
from x402_meter.assets import default_asset

PAGE_DIR: Final = Path(__file__).with_name("chat_page")
PAGE: Final = PAGE_DIR / "chat.html"
SCRIPT: Final = PAGE_DIR / "build" / "x402-chat.js"
"""Built by ``npm run build:chat`` (``make install`` runs it; the tests build it too)."""
MAX_PER_REQUEST: Final = "0.05"  # the page signs no more per answer (test USDC on anvil)


@dataclass(frozen=True, slots=True)
class Plan:
    """One entry of the page's selector: a model, sold per token or per answer."""

    id: str
    model: str
    path: str
    label: str
    sessions: bool = False
    """Whether the plan's route offers sessions (the page then pays it by session)."""


def plans(settings: Settings) -> list[Plan]:
    options = []
    for model in sorted(set(settings.prices) - {"*"}):
        price = settings.prices[model]
        options.append(
            Plan(
                f"{model}:token",
                model,
                "/v1/chat/completions",
                f"{price} USDC / token",
                sessions=settings.offers_sessions,
            )
        )
    for model in sorted(set(settings.flat_prices) - {"*"}):
        price = settings.flat_prices[model]
        options.append(
            Plan(f"{model}:flat", model, "/flat/v1/chat/completions", f"{price} USDC / answer")
        )
    return options


def page_config(settings: Settings) -> dict[str, Any]:
    """What the page needs before its first payment: no secret, nothing per caller."""
    asset = settings.asset or default_asset(settings.network)
    namespace, _, reference = settings.network.partition(":")
    return {
        "network": settings.network,
        "chain_id": int(reference) if namespace == "eip155" and reference.isdigit() else None,
        "asset": {"address": asset.address, "name": asset.name, "decimals": asset.decimals},
        "rpc_url": settings.rpc_url,
        "max_per_request": MAX_PER_REQUEST,
        "sessions": settings.offers_sessions,
        "plans": [
            {"id": p.id, "model": p.model, "path": p.path, "label": p.label, "sessions": p.sessions}
            for p in plans(settings)
        ],
    }


def page_router() -> APIRouter:
    """The page and its script alone: to serve them from an origin of their own."""
    router = APIRouter(prefix="/chat", include_in_schema=False)
    page = PAGE.read_text(encoding="utf-8")

    @router.get("", response_class=HTMLResponse)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page)

    @router.get("/x402-chat.js", response_model=None)
    async def chat_script() -> Response:
        if not SCRIPT.is_file():
            return JSONResponse(
                {"reason": "not_built", "error": "run `npm ci && npm run build:chat`"}, 404
            )
        return FileResponse(SCRIPT, media_type="text/javascript")

    return router


def chat_router(settings: Settings) -> APIRouter:
    """``/chat``, its script, and ``/chat/config``."""
    router = page_router()
    config = page_config(settings)

    @router.get("/config")
    async def chat_config() -> dict[str, Any]:
        return config

    return router
