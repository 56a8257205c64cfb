"""Opt-in request shaping: make a request stay within what its payment covers.

For OpenAI- and Anthropic-style JSON requests (``shape_requests=True``):

- OpenAI Chat streams get ``stream_options.include_usage`` so the provider reports the
  count; if the client had not asked for it, the extra usage-only chunk is taken out of
  the stream it receives (``UsageChunkFilter``), so it sees what it asked for.
- The output limit (``max_completion_tokens``/``max_tokens``, ``max_output_tokens``,
  Anthropic's ``max_tokens``) is lowered to what the authorized maximum can still pay for
  after the prompt (estimated with the offline tokenizer); it is never raised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Final

from x402_meter.metering import estimate_tokens
from x402_meter.metering.prompt import prompt_text
from x402_meter.pricing import TokenPrice

_OUTPUT_LIMITS: Final = {
    "openai_chat": ("max_completion_tokens", "max_tokens"),
    "openai_responses": ("max_output_tokens",),
    "anthropic": ("max_tokens",),
}


@dataclass(frozen=True, slots=True)
class ShapedRequest:
    body: bytes
    hide_usage_chunk: bool
    output_limit: int | None


def api_of(path: str, body: dict[str, Any]) -> str | None:
    if path.endswith("/chat/completions"):
        return "openai_chat"
    if path.endswith("/responses"):
        return "openai_responses"
    if path.endswith("/messages") and "max_tokens" in body:
        return "anthropic"
    return None


def affordable_output(
    request_body: bytes, price: TokenPrice, decimals: int, max_amount: int
) -> int | None:
    """How many output tokens the authorization still covers after the prompt (None: any)."""
    if price.output <= 0:
        return None
    prompt_cost = price.input * estimate_tokens(prompt_text(request_body))
    left = Decimal(max_amount).scaleb(-decimals) - prompt_cost
    tokens = int((left / price.output).to_integral_value(rounding=ROUND_FLOOR))
    return max(tokens, 1)


def shape_request(
    path: str, raw: bytes, price: TokenPrice, decimals: int, max_amount: int
) -> ShapedRequest | None:
    """The shaped body, or None when the request is not one this knows how to shape."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    api = api_of(path, body)
    if api is None:
        return None
    hide_usage_chunk = False
    if api == "openai_chat" and body.get("stream") is True:
        options = body.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            hide_usage_chunk = True
    limit = affordable_output(raw, price, decimals, max_amount)
    if limit is not None:
        fields = _OUTPUT_LIMITS[api]
        present = [field for field in fields if isinstance(body.get(field), int)]
        for field in present or fields[:1]:
            body[field] = min(body.get(field, limit), limit)
    return ShapedRequest(json.dumps(body).encode(), hide_usage_chunk, limit)


class UsageChunkFilter:
    """Drops the usage-only chunk (``"choices": []`` with ``usage``) from an SSE byte stream.

    Holds back at most one incomplete event; everything else passes as it comes.
    """

    def __init__(self) -> None:
        self._pending = b""

    def filter(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._pending = data
            return b""
        complete, self._pending = data[: end + 2], data[end + 2 :]
        if b'"usage"' not in complete:
            return complete
        events = complete.split(b"\n\n")[:-1]
        return b"".join(event + b"\n\n" for event in events if not _usage_only(event))

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest


def _usage_only(event: bytes) -> bool:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                payload = json.loads(line[5:])
            except ValueError:
                return False
            return (
                isinstance(payload, dict)
                and payload.get("choices") == []
                and isinstance(payload.get("usage"), dict)
            )
    return False
