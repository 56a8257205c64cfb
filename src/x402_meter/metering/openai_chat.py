"""OpenAI Chat Completions, and every server that speaks it (vLLM, llama.cpp, Ollama's
``/v1``, LiteLLM ...): ``usage`` in JSON bodies and in SSE streams.

- JSON (``object: chat.completion``, or ``text_completion`` for legacy completions): ``usage``
  with ``prompt_tokens`` (cached ones included, ``prompt_tokens_details.cached_tokens`` of
  them from the cache) and ``completion_tokens`` (``completion_tokens_details
  .reasoning_tokens`` included).
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
    markers = ('"prompt_tokens"',)
    cumulative = True

    @staticmethod
    def recognises(event: dict[str, Any]) -> bool:
        return event.get("object") in OBJECTS or isinstance(event.get("choices"), list)

    def read(self, event: Any) -> None:
        usage = field(event, "usage")
        if not isinstance(usage, dict):
            return
        prompt = count(usage.get("prompt_tokens"))
        completion = count(usage.get("completion_tokens"))
        if prompt is None or completion is None:
            return  # not a usage report this meter can trust
        self.input_tokens = prompt
        self.output_tokens = completion
        self.cached_input_tokens = (
            count(field(usage, "prompt_tokens_details", "cached_tokens")) or 0
        )
        self.read_model(event)

    def read_model(self, event: Any) -> None:
        model = field(event, "model")
        if isinstance(model, str) and model:
            self.model = model

    def texts(self, event: Any) -> Iterator[str]:
        for choice in dicts(field(event, "choices")):
            yield from strings(choice.get("text"))  # legacy completions
            for key in ("delta", "message"):
                message = choice.get(key)
                if isinstance(message, dict):
                    yield from _message_texts(message)


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


def openai_chat_meter(response: ResponseInfo, *, encoding: str = DEFAULT_ENCODING) -> Meter:
    """A meter that reads every body as OpenAI Chat Completions (the 0.1 default).

    :func:`~x402_meter.metering.auto_meter` recognises this format and the others by itself.
    """
    return BodyMeter(response, extractor=OpenAIChatUsage(), encoding=encoding)
