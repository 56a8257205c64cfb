"""Ollama's native API (``/api/chat``, ``/api/generate``): NDJSON, or one JSON object.

Every object has ``model``, ``created_at`` and ``done``; the last one (``done: true``) has
``prompt_eval_count`` (input) and ``eval_count`` (output, thinking included). Ollama leaves
``prompt_eval_count`` out when the whole prompt came from its cache: the input is then
estimated from the request. The text goes out in ``message.content``/``message.thinking``
(chat) or ``response``/``thinking`` (generate).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from x402_meter.metering.extractor import (
    UsageExtractor,
    compact_json,
    count,
    dicts,
    strings,
)


class OllamaUsage(UsageExtractor):
    provider = "ollama"
    model_paths = (("model",),)
    markers = ('"eval_count"', '"prompt_eval_count"')

    @staticmethod
    def recognises(event: dict[str, Any]) -> bool:
        return isinstance(event.get("done"), bool) and ("created_at" in event or "model" in event)

    def read(self, event: Any) -> None:
        if not isinstance(event, dict) or event.get("done") is not True:
            return
        prompt = count(event.get("prompt_eval_count"))
        output = count(event.get("eval_count"))
        if prompt is not None:
            self.input_tokens = prompt
        if output is not None:
            self.output_tokens = output
        self.read_model(event)

    def texts(self, event: Any) -> Iterator[str]:
        if not isinstance(event, dict):
            return
        yield from strings(event.get("thinking"), event.get("response"))
        message = event.get("message")
        if isinstance(message, dict):
            yield from strings(message.get("thinking"), message.get("content"))
            for call in dicts(message.get("tool_calls")):
                function = call.get("function")
                if isinstance(function, dict):
                    yield from strings(
                        function.get("name"), compact_json(function.get("arguments"))
                    )
