"""An offline stand-in for an LLM behind an OpenAI-compatible ``/v1/chat/completions``.

It streams a canned answer piece by piece, the way the OpenAI API streams chunks, and
reports ``usage`` the way OpenAI does (in the final chunk when ``stream_options.
include_usage`` is set, always in JSON answers). Its "tokens" are its own pieces: it is a
stub for demos and tests, not a model. ``stub_answer`` picks one of three canned answers by
the last question's words, so a conversation reads naturally in the demo and the tutorial.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

ANSWER: Final = (
    "x402 lets a server ask for payment in the HTTP response itself: a 402 tells the "
    "client what to pay, the client signs an authorization, and a facilitator settles it "
    "on chain. With the upto scheme the client authorizes a maximum, the server streams "
    "its answer, and only the tokens actually used are charged."
)

PAYMENT_ANSWER: Final = (
    "This answer is paid with x402: your client answered the server's 402 by signing a "
    "payment authorization, the server streamed the answer while counting its tokens, and "
    "once the stream closed the facilitator settled the price on chain. The receipt holds "
    "the tokens, the amount and the transaction."
)
GREETING: Final = (
    "Hello! I am an offline stub model behind x402-meter: every token I send is counted, "
    "and you pay for exactly those, in test USDC on a local chain."
)
_TOPICS: Final = (
    (frozenset({"hello", "hi", "hey"}), GREETING),
    (frozenset({"pay", "paid", "payment", "settle", "settled", "cost", "charge", "price"}), ""),
)


def stub_answer(request: dict[str, Any]) -> str:
    """The stub's canned answer to the last user message: greeting, payment, or x402 itself."""
    messages = request.get("messages")
    last = ""
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1].get("content") if users else None
        last = content if isinstance(content, str) else ""
    words = set(re.findall(r"[a-z]+", last.lower()))
    for keywords, answer in _TOPICS:
        if words & keywords:
            return answer or PAYMENT_ANSWER
    return ANSWER


def pieces(text: str = ANSWER) -> list[str]:
    """The answer cut into token-like pieces (a word with its leading space)."""
    words = text.split(" ")
    return [words[0], *(" " + word for word in words[1:])]


def prompt_tokens(messages: Any) -> int:
    """A stand-in prompt count: about four bytes per token of message content."""
    if not isinstance(messages, list):
        return 0
    text = "".join(
        m.get("content", "")
        for m in messages
        if isinstance(m, dict) and isinstance(m.get("content"), str)
    )
    return math.ceil(len(text.encode()) / 4)


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-local",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def stream_chat(
    request: dict[str, Any], answer: Sequence[str] | None = None
) -> AsyncIterator[bytes]:
    """SSE chunks of a chat completion; usage last when the request asked for it."""
    model = str(request.get("model", "local-stub"))
    parts = list(answer) if answer is not None else pieces()
    yield _chunk(model, {"role": "assistant", "content": ""})
    for part in parts:
        yield _chunk(model, {"content": part})
    yield _chunk(model, {}, "stop")
    options = request.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        usage = {
            "prompt_tokens": prompt_tokens(request.get("messages")),
            "completion_tokens": len(parts),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        final = {
            "id": "chatcmpl-local",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [],
            "usage": usage,
        }
        yield b"data: " + json.dumps(final).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def complete_chat(request: dict[str, Any], answer: Sequence[str] | None = None) -> dict[str, Any]:
    """A non-streaming chat completion with ``usage``."""
    parts = list(answer) if answer is not None else pieces()
    prompt = prompt_tokens(request.get("messages"))
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(request.get("model", "local-stub")),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(parts)},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": len(parts),
            "total_tokens": prompt + len(parts),
        },
    }
