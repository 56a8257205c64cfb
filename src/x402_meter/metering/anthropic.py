"""Anthropic Messages (``/v1/messages``): ``usage`` in JSON bodies and SSE streams.

All input = ``input_tokens`` (not from or into a cache) + ``cache_creation_input_tokens`` +
``cache_read_input_tokens``; cached input = ``cache_read_input_tokens``; ``output_tokens``
includes extended thinking.

Streams: ``message_start`` carries the input usage (its ``output_tokens`` is a placeholder
and is not taken); ``message_delta`` carries the *cumulative* usage so far, output always and
input fields when the API sends them: the last one wins, nothing is added up. A stream cut
before its ``message_delta`` has its output estimated from the ``content_block_delta`` text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Final

from x402_meter.metering.extractor import (
    MAX_KEPT_SIZE,
    UsageExtractor,
    compact_json,
    count,
    dicts,
    field,
    strings,
)

_INPUT_FIELDS: Final = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
_STREAM_TYPES: Final = frozenset(
    {"message_start", "content_block_start", "content_block_delta", "message_delta"}
)


class AnthropicUsage(UsageExtractor):
    provider = "anthropic"
    markers = ('"usage"',)
    model_paths = (("model",), ("message", "model"))
    text_key: ClassVar[str | None] = '"text"'
    other_text_keys = ('"thinking"', '"partial_json"', '"name"', '"input"')
    chunk_event = "content_block_delta"

    def __init__(self, max_kept_size: int = MAX_KEPT_SIZE) -> None:
        super().__init__(max_kept_size)
        self._input: dict[str, int] = {}

    @staticmethod
    def recognises(event: dict[str, Any]) -> bool:
        kind = event.get("type")
        return kind in _STREAM_TYPES or (kind == "message" and "content" in event)

    def read(self, event: Any) -> None:
        kind = field(event, "type")
        if kind == "message_start":
            message = field(event, "message")
            self._read_input(field(message, "usage"))
            self.read_model(event)
        elif kind == "message_delta":
            usage = field(event, "usage")
            self._read_input(usage)
            self._read_output(usage)
        elif kind == "message":
            usage = field(event, "usage")
            self._read_input(usage)
            self._read_output(usage)
            self.read_model(event)

    def _read_input(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for name in _INPUT_FIELDS:
            value = count(usage.get(name))
            if value is not None:
                self._input[name] = value
        if "input_tokens" in self._input:
            self.input_tokens = sum(self._input.values())
            self.cached_input_tokens = self._input.get("cache_read_input_tokens", 0)

    def _read_output(self, usage: Any) -> None:
        output = count(field(usage, "output_tokens"))
        if output is not None:
            self.output_tokens = output

    def texts(self, event: Any) -> Iterator[str]:
        kind = field(event, "type")
        if kind == "content_block_delta":
            delta = field(event, "delta")
            if isinstance(delta, dict):
                yield from strings(delta.get("text"), delta.get("thinking"))
                yield from strings(delta.get("partial_json"))
        elif kind == "content_block_start":
            block = field(event, "content_block")
            if isinstance(block, dict):
                yield from strings(block.get("text"), block.get("thinking"))
        elif kind == "message":
            for block in dicts(field(event, "content")):
                yield from strings(block.get("text"), block.get("thinking"))
                if block.get("type") in ("tool_use", "server_tool_use"):
                    yield from strings(block.get("name"), compact_json(block.get("input")))
