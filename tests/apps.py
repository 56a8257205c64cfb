"""Tiny apps that answer like an OpenAI-compatible chat endpoint, one per framework."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tests.openai_stream import completion_json, sse_events
from x402_meter import Asset, MemoryStore
from x402_meter.devstack import LocalStack
from x402_meter.metering import estimate_tokens
from x402_meter.metering.prompt import prompt_text

PRICE = "0.000002"  # 2 atomic units of a 6-decimal token per token
PRICE_ATOMIC = 2
MAX_TOKENS = 4096


def prompt_tokens(body: Any) -> int:
    """The prompt of a JSON request body as the meter estimates it."""
    return estimate_tokens(prompt_text(json.dumps(body).encode()))


def max_amount(body: Any, max_tokens: int = MAX_TOKENS, price_atomic: int = PRICE_ATOMIC) -> int:
    """What a 402 asks for ``body`` at one flat price: its prompt plus ``max_tokens``."""
    return (prompt_tokens(body) + max_tokens) * price_atomic


def meter_options(stack: LocalStack, **overrides: Any) -> dict[str, Any]:
    """X402Meter's options for the local stack, with a fresh store per app."""
    options: dict[str, Any] = {
        "pay_to": stack.pay_to,
        "facilitator_url": stack.facilitator_url,
        "facilitator_api_key": stack.facilitator_api_key,
        "network": stack.network,
        "asset": Asset(stack.asset, stack.asset_name, stack.asset_version, stack.asset_decimals),
        "price_per_token": PRICE,
        "max_tokens": MAX_TOKENS,
        "routes": ["POST /v1/chat/completions"],
        "store": MemoryStore(),
    }
    options.update(overrides)
    return options


async def sse_body(gate: Callable[[int], Awaitable[None]] | None = None) -> AsyncIterator[bytes]:
    for index, event in enumerate(sse_events()):
        if gate is not None:
            await gate(index)
        yield event


def wants_stream(body: Any) -> bool:
    return isinstance(body, dict) and bool(body.get("stream"))


__all__ = ["completion_json", "meter_options", "sse_body", "wants_stream"]
