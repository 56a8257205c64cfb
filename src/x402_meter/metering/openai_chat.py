"""OpenAI Chat Completions, and every server that speaks it (vLLM, llama.cpp, Ollama's
``/v1``, LiteLLM ...): ``usage`` in JSON bodies and in SSE streams.

- JSON (``object: chat.completion``, or ``text_completion`` for legacy completions): ``usage``
  with ``prompt_tokens`` (cached ones included, ``prompt_tokens_details.cached_tokens`` of
  them from the cache) and ``completion_tokens`` (``completion_tokens_details
  .reasoning_tokens`` included).
- Embeddings (``object: list`` of ``embedding`` objects): ``usage.prompt_tokens`` is the
  input; there is no output.
- Streams (``chat.completion.chunk``) report usage when the request set
  ``stream_options.include_usage``: in a final chunk with no choices, ``"usage": null`` in the
  others. vLLM and llama.cpp with ``stream_options.continuous_usage_stats`` put the running
  totals in every chunk: the last one wins.

Without a report (no ``include_usage``, or a stream cut short) the output is estimated from
the text of the chunks that were forwarded, and the input from the request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from x402_meter.metering.base import Meter, ResponseInfo
from x402_meter.metering.extractor import (
    UsageExtractor,
    compact_json,
    count,
    dicts,
    field,
    strings,
)
from x402_meter.metering.meter import BodyMeter
from x402_meter.metering.tokenizer import DEFAULT_ENCODING, estimate_tokens

__all__ = ["OpenAIChatUsage", "estimate_tokens", "openai_chat_meter"]

OBJECTS = frozenset({"chat.completion", "chat.completion.chunk", "text_completion"})


class OpenAIChatUsage(UsageExtractor):
    provider = "openai_chat"
    model_paths = (("model",),)
    markers = ('"prompt_tokens"',)
    cumulative = True
    final_reports = True
    text_key = '"content"'
    other_text_keys = ('"text"', '"reasoning', '"refusal"', '"tool_calls"', '"name"', '"arguments"')

    @staticmethod
    def recognises(event: dict[str, Any]) -> bool:
        return (
            event.get("object") in OBJECTS
            or isinstance(event.get("choices"), list)
            or _is_embeddings(event)
        )

    def reports_output(self, event: Any) -> bool:
        return _usage_report(event) is not None

    def read(self, event: Any) -> None:
        report = _usage_report(event)
        if report is None:
            return
        usage, prompt, completion = report
        self.input_tokens = prompt
        self.output_tokens = completion
        self.cached_input_tokens = (
            count(field(usage, "prompt_tokens_details", "cached_tokens")) or 0
        )
        self.read_model(event)

    def texts(self, event: Any) -> Iterator[str]:
        for choice in dicts(field(event, "choices")):
            yield from strings(choice.get("text"))  # legacy completions
            for key in ("delta", "message"):
                message = choice.get(key)
                if isinstance(message, dict):
                    yield from _message_texts(message)

    def text(self, event: Any) -> str:
        # texts(), joined, without a generator per level: run once per chunk of a stream
        # that reports no usage (or, to check the cap, before it does).
        choices = event.get("choices") if isinstance(event, dict) else None
        if not isinstance(choices, list):
            return ""
        parts: list[str] = []
        for choice in choices:
            if isinstance(choice, dict):
                value = choice.get("text")
                if isinstance(value, str):
                    parts.append(value)
                for key in ("delta", "message"):
                    message = choice.get(key)
                    if isinstance(message, dict):
                        _message_parts(message, parts)
        return "".join(parts)


def _usage_report(event: Any) -> tuple[dict[str, Any], int, int] | None:
    """``(usage, prompt_tokens, completion_tokens)`` of a usage report this meter can trust
    (both counts there), else None."""
    usage = field(event, "usage")
    if not isinstance(usage, dict):
        return None
    prompt = count(usage.get("prompt_tokens"))
    completion = count(usage.get("completion_tokens"))
    if completion is None and _is_embeddings(event):
        completion = 0  # embeddings: the input is all there is to count
    if prompt is None or completion is None:
        return None
    return usage, prompt, completion


def _is_embeddings(event: Any) -> bool:
    """An embeddings answer: ``{"object": "list", "data": [{"object": "embedding", ...}]}``."""
    if not isinstance(event, dict) or event.get("object") != "list":
        return False
    data = event.get("data")
    return (
        isinstance(data, list)
        and bool(data)
        and isinstance(data[0], dict)
        and (data[0].get("object") == "embedding")
    )


def _message_texts(message: dict[str, Any]) -> Iterator[str]:
    # reasoning_content: vLLM, DeepSeek, llama.cpp; reasoning: OpenRouter, Ollama's /v1.
    yield from strings(
        message.get("reasoning_content"),
        message.get("reasoning"),
        message.get("content"),
        message.get("refusal"),
    )
    for call in dicts(message.get("tool_calls")):
        function = call.get("function")
        if isinstance(function, dict):
            arguments = function.get("arguments")
            yield from strings(
                function.get("name"),
                arguments if isinstance(arguments, str) else compact_json(arguments),
            )


_MESSAGE_TEXT_KEYS = ("reasoning_content", "reasoning", "content", "refusal")


def _message_parts(message: dict[str, Any], parts: list[str]) -> None:
    """What _message_texts yields, appended to ``parts`` (empty strings join to nothing)."""
    for key in _MESSAGE_TEXT_KEYS:
        value = message.get(key)
        if isinstance(value, str):
            parts.append(value)
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                name = function.get("name")
                if isinstance(name, str):
                    parts.append(name)
                arguments = function.get("arguments")
                parts.append(arguments if isinstance(arguments, str) else compact_json(arguments))


def openai_chat_meter(
    response: ResponseInfo, *, encoding: str = DEFAULT_ENCODING, accelerate: bool = True
) -> Meter:
    """A meter that reads every body as OpenAI Chat Completions (the 0.1 default).

    :func:`~x402_meter.metering.auto_meter` recognises this format and the others by itself.
    ``accelerate``: as for :func:`~x402_meter.metering.auto_meter`.
    """
    return BodyMeter(
        response, extractor=OpenAIChatUsage(), encoding=encoding, accelerate=accelerate
    )
