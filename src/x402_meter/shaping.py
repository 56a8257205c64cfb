"""Opt-in request shaping: make a request stay within what its payment covers.

For the JSON requests of OpenAI (Chat, completions, Responses), Anthropic, Gemini, Ollama
and llama.cpp (``shape_requests=True``), read as a lenient upstream reads them:

- OpenAI Chat streams (``"stream"`` anything an upstream reads as true) get
  ``stream_options.include_usage`` so the provider reports the count; if the client had not
  asked for it, the extra usage-only chunk is taken out of the stream it receives
  (``UsageChunkFilter``), so it sees what it asked for.
- Every output-limit field the API has (``max_completion_tokens``/``max_tokens``,
  ``max_output_tokens``, Gemini's ``generationConfig.maxOutputTokens``, Ollama's
  ``options.num_predict``, llama.cpp's ``n_predict``), whatever JSON number it holds, is
  lowered to what the authorized maximum can still pay for after the prompt (estimated
  with the offline tokenizer); it is never raised, and one is set if none is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Final

from x402_meter.metering import estimate_tokens
from x402_meter.metering.prompt import prompt_text
from x402_meter.pricing import TokenPrice

_OUTPUT_LIMITS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "openai_chat": (("max_completion_tokens",), ("max_tokens",)),
    "openai_completions": (("max_tokens",),),
    "openai_responses": (("max_output_tokens",),),
    "anthropic": (("max_tokens",),),
    "gemini": (("generationConfig", "maxOutputTokens"), ("generation_config", "max_output_tokens")),
    "ollama": (("options", "num_predict"),),
    "llama_cpp": (("n_predict",), ("max_tokens",)),
}
"""Each API's output-limit fields, as paths into the body; the first is set when none is."""

_TRUE_WORDS: Final = frozenset({"1", "true", "t", "yes", "y", "on"})
"""Strings lenient servers (pydantic's lax mode, for one) read as true."""


@dataclass(frozen=True, slots=True)
class ShapedRequest:
    body: bytes
    hide_usage_chunk: bool
    output_limit: int | None


def api_of(path: str, body: dict[str, Any]) -> str | None:
    if path.endswith("/chat/completions"):
        return "openai_chat"
    if path.endswith("/completions"):
        return "openai_completions"
    if path.endswith("/responses"):
        return "openai_responses"
    if path.endswith("/messages"):
        return "anthropic"
    if path.endswith((":generateContent", ":streamGenerateContent")):
        return "gemini"
    if path.endswith(("/api/chat", "/api/generate")):
        return "ollama"
    if path.endswith("/completion"):
        return "llama_cpp"
    return None


def reads_as_true(value: object) -> bool:
    """Whether a lenient upstream reads ``value`` as true (``"stream": 1`` streams there)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    return isinstance(value, str) and value.strip().lower() in _TRUE_WORDS


def reads_as_count(value: object) -> int | None:
    """``value`` as the positive whole number a lenient upstream reads in it, if it is one:
    ``5000``, ``5000.0``, ``"5000"``; None for anything else (``-1``, ``0.5``, ``true``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    return value if isinstance(value, int) and value > 0 else None


def affordable_output(
    request_body: bytes, price: TokenPrice, decimals: int, max_amount: int
) -> int | None:
    """How many output tokens the authorization still covers after the prompt (None: any)."""
    if price.output <= 0:
        return None
    prompt_cost = price.input * estimate_tokens(prompt_text(request_body))
    left = Decimal(max_amount).scaleb(-decimals) - price.per_request - prompt_cost
    tokens = int((left / price.output).to_integral_value(rounding=ROUND_FLOOR))
    return max(tokens, 1)


def shape_request(
    path: str, raw: bytes, price: TokenPrice, decimals: int, max_amount: int
) -> ShapedRequest | None:
    """The shaped body, or None when the request is not one this knows how to shape.

    Fields are read as lenient upstreams read them: ``"stream": 1`` streams, and an output
    limit of ``5000.0`` or ``"5000"`` is 5000. A limit that reads as no whole positive
    number (``-1``, Ollama's "no limit"; ``0.5``; ``null``) is replaced by what is covered.
    """
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
    if api == "openai_chat" and reads_as_true(body.get("stream")):
        options = body.get("stream_options")
        if not (isinstance(options, dict) and reads_as_true(options.get("include_usage"))):
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            hide_usage_chunk = True
    limit = affordable_output(raw, price, decimals, max_amount)
    if limit is not None:
        _limit_output(body, _OUTPUT_LIMITS[api], limit)
    return ShapedRequest(json.dumps(body).encode(), hide_usage_chunk, limit)


def _limit_output(body: dict[str, Any], fields: tuple[tuple[str, ...], ...], limit: int) -> None:
    """Lower every output-limit field the body has to ``limit`` (set the first if none)."""
    present = False
    for *parents, name in fields:
        holder: Any = body
        for key in parents:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and name in holder:
            present = True
            given = reads_as_count(holder[name])
            holder[name] = limit if given is None else min(given, limit)
    if not present:
        *parents, name = fields[0]
        holder = body
        for key in parents:
            child = holder.get(key)
            if not isinstance(child, dict):
                child = holder[key] = {}
            holder = child
        holder[name] = limit


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
