"""The chat page (``GET /chat``): a paywalled chat, paid from a local dev wallet.

The browser never holds a key. It posts the conversation to ``POST /chat/api/ask``; this
server pays its own metered routes with one of anvil's **well-known, public dev keys**
(``X402_CHAT_DEV_ACCOUNT``; test funds on the local chain only) through x402-meter's paying
client, and streams back NDJSON events: the payment, the answer's text as it comes, then
its cost (tokens in and out, amount, transaction) and the wallet's running spend.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from examples.common.settings import Settings
from x402_meter import ConfigurationError
from x402_meter.client import PayerError, PayingAsyncClient, Wallet
from x402_meter.devstack.accounts import dev_account
from x402_meter.metering.sse import SSEParser

PAGE: Final = Path(__file__).with_name("chat.html")
MAX_PER_REQUEST: Final = "0.05"  # test USDC: the dev wallet signs no more per answer
MAX_TOTAL: Final = "5"  # ... and no more in all
MAX_MESSAGES: Final = 50


@dataclass(frozen=True, slots=True)
class Plan:
    """One entry of the page's selector: a model, sold per token or per answer."""

    id: str
    model: str
    path: str
    label: str


def plans(settings: Settings) -> list[Plan]:
    options = []
    for model in sorted(set(settings.prices) - {"*"}):
        price = settings.prices[model]
        options.append(
            Plan(f"{model}:token", model, "/v1/chat/completions", f"{price} USDC / token")
        )
    for model in sorted(set(settings.flat_prices) - {"*"}):
        price = settings.flat_prices[model]
        options.append(
            Plan(f"{model}:flat", model, "/flat/v1/chat/completions", f"{price} USDC / answer")
        )
    return options


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode() + b"\n"


def _delta_text(data: str) -> str:
    try:
        chunk = json.loads(data)
        return "".join(c["delta"].get("content") or "" for c in chunk.get("choices", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""


def _messages(body: Any) -> list[dict[str, str]]:
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not 0 < len(messages) <= MAX_MESSAGES:
        raise HTTPException(400, "messages: a list of 1 to 50 messages")
    checked = []
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ("user", "assistant") or not isinstance(content, str):
            raise HTTPException(400, "messages: each one a user or assistant text")
        checked.append({"role": role, "content": content})
    return checked


def chat_router(settings: Settings) -> APIRouter:
    """``/chat`` and its API, paying from anvil dev account ``settings.chat_dev_account``."""
    if settings.chat_dev_account is None:
        raise ConfigurationError("the chat page needs X402_CHAT_DEV_ACCOUNT")
    account = dev_account(settings.chat_dev_account)  # only anvil's public dev keys
    wallet = Wallet(
        account.account,
        network=settings.network,
        asset=settings.asset,
        max_per_request=MAX_PER_REQUEST,
        max_total=MAX_TOTAL,
        rpc_url=settings.rpc_url,  # the spend shown is what the chain proves, not receipts
    )
    by_id = {plan.id: plan for plan in plans(settings)}
    page = PAGE.read_text(encoding="utf-8")
    router = APIRouter(prefix="/chat")

    def usdc(atomic: int) -> str:
        return f"{wallet.to_decimal(atomic).normalize():f}"

    def spent() -> dict[str, Any]:
        paid = [p for p in wallet.payments if p.receipt is not None]
        return {"spent": usdc(wallet.spent), "answers": len(paid)}

    @router.get("", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page)

    @router.get("/api/config")
    async def chat_config() -> dict[str, Any]:
        return {
            "wallet": wallet.address,
            "wallet_label": (
                f"anvil dev account #{account.index}: a well-known public key,"
                " test funds on the local chain only"
            ),
            "network": settings.network,
            "max_per_request": MAX_PER_REQUEST,
            "plans": [{"id": p.id, "model": p.model, "label": p.label} for p in by_id.values()],
            **spent(),
        }

    @router.post("/api/ask")
    async def chat_ask(request: Request) -> StreamingResponse:
        body = await request.json()
        plan = by_id.get(str(body.get("plan")) if isinstance(body, dict) else "")
        if plan is None:
            raise HTTPException(400, f"plan: one of {sorted(by_id)}")
        url = str(request.base_url).rstrip("/") + plan.path
        request_body = {"model": plan.model, "messages": _messages(body), "stream": True}
        return StreamingResponse(
            answer(wallet, url, request_body, usdc, spent), media_type="application/x-ndjson"
        )

    return router


async def answer(
    wallet: Wallet,
    url: str,
    body: dict[str, Any],
    usdc: Callable[[int], str],
    spent: Callable[[], dict[str, Any]],
) -> AsyncIterator[bytes]:
    """Pay for one answer, relay its text, then report what it cost."""
    async with PayingAsyncClient(wallet=wallet, timeout=120) as http:
        try:
            async with http.stream("POST", url, json=body) as response:
                payment = http.payment_of(response)
                if response.status_code != 200 or payment is None:
                    detail = (await response.aread()).decode(errors="replace")[:300]
                    message = f"HTTP {response.status_code}: {detail}"
                    yield _line({"type": "error", "message": message})
                    return
                yield _line(
                    {
                        "type": "paid",
                        "scheme": payment.scheme,
                        "max_amount": usdc(payment.max_amount),
                    }
                )
                parser = SSEParser()
                async for chunk in response.aiter_raw():
                    for event in parser.feed(chunk):
                        text = _delta_text(event.data)
                        if text:
                            yield _line({"type": "delta", "text": text})
            receipt = await http.receipt(payment, wait=30)
        except PayerError as exc:
            yield _line({"type": "error", "message": str(exc)})
            return
    yield _line(
        {
            "type": "cost",
            "status": receipt.status,
            "scheme": receipt.scheme,
            "input_tokens": receipt.input_tokens,
            "output_tokens": receipt.output_tokens,
            "amount": usdc(receipt.amount or 0),
            "max_amount": usdc(payment.max_amount),
            "transaction": receipt.transaction,
            **spent(),
        }
    )
