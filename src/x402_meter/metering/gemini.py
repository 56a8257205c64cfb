"""Google Gemini (``generateContent``, ``streamGenerateContent``): ``usageMetadata``.

Input = ``promptTokenCount`` (cached content included, ``cachedContentTokenCount`` of it)
+ ``toolUsePromptTokenCount`` (the results of built-in tools, fed back as prompt);
output = ``candidatesTokenCount`` + ``thoughtsTokenCount``. A report without either output
field but with ``totalTokenCount`` has the output as the rest of the total.

The same objects come as one JSON body, as the elements of a JSON array streamed as they are
generated (``streamGenerateContent`` without ``alt=sse``) or as SSE events (``alt=sse``).
Each chunk of a stream may carry ``usageMetadata``, running totals: the last one wins.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from x402_meter.metering.extractor import (
    UsageExtractor,
    compact_json,
    count,
    dicts,
    field,
    strings,
)


class GeminiUsage(UsageExtractor):
    provider = "gemini"
    model_paths = (("modelVersion",),)
    markers = ('"usageMetadata"',)
    cumulative = True

    @staticmethod
    def recognises(event: dict[str, Any]) -> bool:
        return "candidates" in event or "usageMetadata" in event or "promptFeedback" in event

    def read(self, event: Any) -> None:
        usage = field(event, "usageMetadata")
        if not isinstance(usage, dict):
            return
        prompt = count(usage.get("promptTokenCount"))
        if prompt is None:
            return
        tool_prompt = count(usage.get("toolUsePromptTokenCount")) or 0
        candidates = count(usage.get("candidatesTokenCount"))
        thoughts = count(usage.get("thoughtsTokenCount"))
        total = count(usage.get("totalTokenCount"))
        if candidates is not None or thoughts is not None:
            output: int | None = (candidates or 0) + (thoughts or 0)
        elif total is not None:
            output = max(total - prompt - tool_prompt, 0)
        else:
            output = None
        self.input_tokens = prompt + tool_prompt
        self.cached_input_tokens = count(usage.get("cachedContentTokenCount")) or 0
        if output is not None:
            self.output_tokens = output
        self.read_model(event)

    def texts(self, event: Any) -> Iterator[str]:
        for candidate in dicts(field(event, "candidates")):
            for part in dicts(field(candidate, "content", "parts")):
                yield from strings(part.get("text"))  # thought summaries too
                call = part.get("functionCall")
                if isinstance(call, dict):
                    yield from strings(call.get("name"), compact_json(call.get("args")))
                yield from strings(field(part, "executableCode", "code"))
