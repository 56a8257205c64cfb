"""OpenAI Chat Completions answers, as the API sends them, for the metering tests."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

PIECES: tuple[str, ...] = ("The ", "answer ", "is ", "forty", "-two", ".")
PROMPT_TOKENS = 57
COMPLETION_TOKENS = 116


def usage(prompt: int = PROMPT_TOKENS, completion: int = COMPLETION_TOKENS) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-test",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def sse_events(pieces: Sequence[str] = PIECES, with_usage: bool = True) -> Iterator[bytes]:
    """One SSE event per piece, then the usage-only chunk (include_usage), then [DONE]."""
    yield _chunk({"role": "assistant", "content": ""})
    for piece in pieces:
        yield _chunk({"content": piece})
    yield _chunk({}, "stop")
    if with_usage:
        final = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-test",
            "choices": [],
            "usage": usage(),
        }
        yield b"data: " + json.dumps(final).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def completion_json(text: str = "".join(PIECES)) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-test",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": usage(),
    }
