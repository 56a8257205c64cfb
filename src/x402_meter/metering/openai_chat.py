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

import re
from collections.abc import Iterator
from typing import Any

from x402_meter.metering.base import Meter, ResponseInfo
from x402_meter.metering.extractor import (
    MAX_KEPT_SIZE,
    KnownText,
    UsageExtractor,
    compact_json,
    count,
    decode,
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

    @staticmethod
    def recognises(event: dict[str, Any]) -> bool:
        return event.get("object") in OBJECTS or isinstance(event.get("choices"), list)

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

    def __init__(self, max_kept_size: int = MAX_KEPT_SIZE) -> None:
        super().__init__(max_kept_size)
        self._template: tuple[str, str] | None = None
        self._template_model: str | None = None
        """The model the template's chunk names: every chunk of that shape names it too."""
        self._batches_asked = 0

    def chunk_template(self) -> tuple[str, str] | None:
        # Found from the last chunk kept, decoded here: asked after every batch until one is
        # found, for the first batches, then after every sixteenth (a stream of tool calls or
        # of reasoning has no such shape; its answer that follows may).
        if self._template is None and self._kept:
            self._batches_asked += 1
            asked = self._batches_asked
            if asked <= _TEMPLATE_TRIES or asked % _TEMPLATE_RETRY_EVERY == 0:
                data = self._kept[-1]
                if type(data) is not KnownText and not any(m in data for m in self.markers):
                    self._learn_template(data, decode(data))
        return self._template

    def known_text_model(self) -> str | None:
        return self._template_model

    def _learn_template(self, data: str, event: Any) -> str:
        """The text of a decoded chunk; its shape becomes the template if it can be one (a
        template, once found, holds for the whole stream: the last one is kept past chunks
        of other shapes)."""
        text = self.text(event)
        template = _template(data, text)
        if template is not None:
            self._template, self._template_model = template, self.model_of(event)
        return text

    def text_of(self, data: str) -> str:
        # The chunks of one stream differ only in the text they carry: past the first, a
        # chunk that is the last decoded one with another plain string as its content needs
        # no decoding (see _template).
        template = self._template
        if template is not None:
            prefix, suffix = template
            if (
                data.startswith(prefix)
                and data.endswith(suffix)
                and len(data) >= len(prefix) + len(suffix)
            ):
                content = data[len(prefix) : len(data) - len(suffix)]
                if _NOT_PLAIN.search(content) is None:
                    if self.model is None:  # what decoding this chunk would have read
                        self.model = self._template_model
                    return content
        event = decode(data)
        if self.model is None:
            self.read_model(event)
        return self._learn_template(data, event)

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
    if prompt is None or completion is None:
        return None
    return usage, prompt, completion


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


_TEMPLATE_TRIES = 8
"""Batches a meter looks for the chunks' shape in, one after the other, at first."""
_TEMPLATE_RETRY_EVERY = 16
"""Then it looks again in one batch out of so many."""
_CONTENT_KEY = '"content":"'
_OTHER_TEXT_KEYS = ('"text"', '"reasoning', '"refusal"', '"tool_calls"', '"name"', '"arguments"')
_NOT_PLAIN = re.compile(r'["\\\x00-\x1f]')
"""What a JSON string's text cannot hold unescaped (a quote, a backslash, a control)."""


def _template(data: str, text: str) -> tuple[str, str] | None:
    """The text before and after the content of a decoded chunk whose only text is one
    ``"content":"..."`` string with no escape in the whole chunk, else None.

    Another chunk made of the same prefix and suffix around a string with no quote,
    backslash or control character is valid JSON of the same shape, so its text is that
    string: exactly what decoding it would give. With no backslash in the chunk, every key
    is written as it reads, so a single ``"content"`` and none of the other text keys means
    the text came from that string.
    """
    if not text or "\\" in data or any(key in data for key in _OTHER_TEXT_KEYS):
        return None
    start = data.find(_CONTENT_KEY)
    if start < 0 or data.count('"content"') != 1:
        return None
    begin = start + len(_CONTENT_KEY)
    end = data.find('"', begin)
    if end < 0 or data[begin:end] != text:
        return None
    return data[:begin], data[end:]


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


def openai_chat_meter(response: ResponseInfo, *, encoding: str = DEFAULT_ENCODING) -> Meter:
    """A meter that reads every body as OpenAI Chat Completions (the 0.1 default).

    :func:`~x402_meter.metering.auto_meter` recognises this format and the others by itself.
    """
    return BodyMeter(response, extractor=OpenAIChatUsage(), encoding=encoding)
