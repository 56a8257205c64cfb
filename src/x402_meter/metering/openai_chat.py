"""OpenAI-compatible Chat Completions: ``usage`` from JSON bodies and from SSE streams.

Streams report usage in their final chunk when the request set
``stream_options.include_usage``. Without it, or when a stream is cut short, the count is
estimated from the text that was forwarded (``source="estimated"``).
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from x402_meter.metering.base import Meter, ResponseInfo, Usage
from x402_meter.metering.sse import SSEParser

MAX_JSON_BODY: Final = 16 * 1024 * 1024
"""A JSON body larger than this is not parsed for usage (the count falls back to estimation)."""

_BYTES_PER_TOKEN: Final = 4
"""Provisional estimator: about four bytes of English text per token."""


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / _BYTES_PER_TOKEN)


def _usage_from(body: Any) -> Usage | None:
    if not isinstance(body, dict):
        return None
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        max(prompt, 0), max(completion, 0), cached if isinstance(cached, int) and cached > 0 else 0
    )


def _content_of(choices: Any, key: str) -> str:
    if not isinstance(choices, list):
        return ""
    parts = []
    for choice in choices:
        message = choice.get(key) if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
    return "".join(parts)


class OpenAIChatStreamMeter:
    """``text/event-stream`` chat completion chunks.

    Only events that can carry a count (they contain ``"prompt_tokens"``) are JSON-decoded
    as they pass; the others are kept as text and decoded at the end, and only if no usage
    arrived and the count must be estimated from what was forwarded.
    """

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._usage: Usage | None = None
        self._unread: list[str] = []
        self._unread_size = 0

    def feed(self, chunk: bytes) -> None:
        for event in self._parser.feed(chunk):
            self._event(event.data)

    def _event(self, data: str) -> None:
        if '"prompt_tokens"' in data:
            try:
                usage = _usage_from(json.loads(data))
            except (ValueError, RecursionError):  # RecursionError: nested too deep
                usage = None
            if usage is not None:
                self._usage = usage
                return
        if self._usage is None and self._unread_size < MAX_JSON_BODY:
            self._unread.append(data)
            self._unread_size += len(data)

    def _forwarded_text(self) -> str:
        parts = []
        for data in self._unread:
            try:
                body = json.loads(data)
            except (ValueError, RecursionError):  # RecursionError: nested too deep
                continue
            if isinstance(body, dict):
                parts.append(_content_of(body.get("choices"), "delta"))
        return "".join(parts)

    def finish(self) -> Usage:
        for event in self._parser.close():
            self._event(event.data)
        if self._usage is not None:
            return self._usage
        return Usage(0, estimate_tokens(self._forwarded_text()), source="estimated")


class OpenAIChatJSONMeter:
    """``application/json`` chat completions: usage is read once the body is complete."""

    def __init__(self) -> None:
        self._body = bytearray()
        self._overflow = False

    def feed(self, chunk: bytes) -> None:
        if self._overflow:
            return
        self._body += chunk
        if len(self._body) > MAX_JSON_BODY:
            self._overflow = True
            self._body.clear()

    def finish(self) -> Usage:
        try:
            body = json.loads(self._body) if not self._overflow else None
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            body = None
        usage = _usage_from(body)
        if usage is not None:
            return usage
        text = _content_of(body.get("choices"), "message") if isinstance(body, dict) else ""
        return Usage(0, estimate_tokens(text), source="estimated")


class _NoUsageMeter:
    """Bodies of unknown shape: nothing to count but the bytes themselves."""

    def __init__(self) -> None:
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)

    def finish(self) -> Usage:
        return Usage(0, math.ceil(self._size / _BYTES_PER_TOKEN), source="estimated")


def openai_chat_meter(response: ResponseInfo) -> Meter:
    """The default meter factory: OpenAI-compatible chat completions by content type."""
    if response.content_type == "text/event-stream":
        return OpenAIChatStreamMeter()
    if response.content_type == "application/json" or response.content_type.endswith("+json"):
        return OpenAIChatJSONMeter()
    return _NoUsageMeter()
