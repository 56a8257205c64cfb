"""OpenAI Responses API (``/v1/responses``): ``usage`` of a response object.

- JSON: the response object (``object: response``) with ``usage``: ``input_tokens`` (of them
  ``input_tokens_details.cached_tokens`` from the cache), ``output_tokens``
  (``output_tokens_details.reasoning_tokens`` included).
- SSE: typed events; the terminal ``response.completed``, ``response.incomplete`` or
  ``response.failed`` carries the final response object with its ``usage``. The text goes
  out in ``*.delta`` events (``response.output_text.delta``, reasoning summaries, function
  call arguments ...), which the fallback counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from x402_meter.metering.extractor import (
    UsageExtractor,
    count,
    dicts,
    field,
    strings,
)

_NOT_TEXT: Final = frozenset({"response.audio.delta"})
"""Delta events whose ``delta`` is not generated text (base64 audio)."""


class OpenAIResponsesUsage(UsageExtractor):
    provider = "openai_responses"
    markers = ('"input_tokens"',)
    text_key = '"delta"'
    numbered_key = '"sequence_number":'

    @staticmethod
    def recognises(event: dict[str, Any]) -> bool:
        kind = event.get("type")
        return event.get("object") == "response" or (
            isinstance(kind, str) and kind.startswith("response.")
        )

    def read(self, event: Any) -> None:
        response = _response_of(event)
        usage = field(response, "usage")
        if not isinstance(usage, dict):
            return
        input_tokens = count(usage.get("input_tokens"))
        output_tokens = count(usage.get("output_tokens"))
        if input_tokens is None or output_tokens is None:
            return
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        cached = field(usage, "input_tokens_details", "cached_tokens")
        self.cached_input_tokens = count(cached) or 0
        self.read_model(event)

    def read_model(self, event: Any) -> None:
        model = field(_response_of(event), "model")
        if isinstance(model, str) and model:
            self.model = model

    def texts(self, event: Any) -> Iterator[str]:
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if isinstance(kind, str):  # a stream event: only deltas are new text
            if kind.endswith(".delta") and kind not in _NOT_TEXT:
                yield from strings(event.get("delta"))
            return
        if event.get("object") == "response":  # a whole response body
            for item in dicts(event.get("output")):
                yield from _item_texts(item)


def _response_of(event: Any) -> Any:
    """The response object of a JSON body or of a stream event that carries one."""
    if field(event, "object") == "response":
        return event
    return field(event, "response")


def _item_texts(item: dict[str, Any]) -> Iterator[str]:
    for part in dicts(item.get("summary")):  # reasoning summaries
        yield from strings(part.get("text"))
    for part in dicts(item.get("content")):  # output_text, refusal, reasoning_text
        yield from strings(part.get("text"), part.get("refusal"))
    if item.get("type") in ("function_call", "custom_tool_call"):
        yield from strings(item.get("name"), item.get("arguments"), item.get("input"))
