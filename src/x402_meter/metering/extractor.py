"""What every provider's usage extractor shares: counts, cheap filtering, the fallback text.

An extractor is fed the text of each JSON event of one response (an SSE ``data`` field, an
NDJSON line, a JSON array element or a whole JSON body). To keep the hot path cheap it only
JSON-decodes events that contain one of its ``markers`` (a key that usage is reported under,
quotes included: a key in the text of a JSON string would have its quotes escaped). The
others are kept as text, within a budget, until the output count is known; they are decoded at
the end only if it never is, to count the text that was generated.

``cumulative`` formats (each usage report replaces the previous one: OpenAI-compatible
streams with continuous usage, Gemini) decode usage events only until an output count is
known; after that only the text of the latest one is kept, and decoded at the end.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any, ClassVar, Final

from x402_meter.metering.tokenizer import BYTES_PER_TOKEN

MAX_KEPT_SIZE: Final = 16 * 1024 * 1024
"""Characters of event text kept for the fallback count; past that, events count by size."""

UNDECODED: Final[Any] = object()
"""Marks an event not decoded yet (``None`` is a valid decoded JSON value)."""


def decode(data: str) -> Any:
    """The JSON value of ``data``, or ``None`` if it is not JSON (or is nested too deep)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        return None


def count(value: Any) -> int | None:
    """A token count: a non-negative ``int`` (not a ``bool``), else ``None``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def field(value: Any, *keys: str) -> Any:
    """``value[k1][k2]...`` through dictionaries, or ``None`` where the path breaks."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def dicts(value: Any) -> Iterator[dict[str, Any]]:
    """The dictionaries in ``value`` if it is a list."""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item


def strings(*values: Any) -> Iterator[str]:
    for value in values:
        if isinstance(value, str) and value:
            yield value


def compact_json(value: Any) -> str:
    """Tool-call arguments given as an object, as a model would have written them."""
    if value is None or value == {}:
        return ""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return ""


class UsageExtractor:
    """Base of the per-provider extractors; see the module docstring."""

    provider: ClassVar[str] = "unknown"
    markers: ClassVar[tuple[str, ...]] = ()
    cumulative: ClassVar[bool] = False

    def __init__(self, max_kept_size: int = MAX_KEPT_SIZE) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cached_input_tokens = 0
        self.model: str | None = None
        self.dropped = 0
        """Characters of events that were neither kept nor decoded (over the budget)."""
        self._max_kept = max_kept_size
        self._kept: list[str] = []
        self._kept_size = 0
        self._texts: list[str] = []  # the generated text of _kept[:len(_texts)], decoded
        self._latest: str | None = None

    # -- what each provider defines ----------------------------------------------------------

    @staticmethod
    def recognises(event: dict[str, Any]) -> bool:
        """Whether a decoded event is in this provider's format."""
        return False

    def read(self, event: Any) -> None:
        """Take the counts (and the model) a decoded event reports, if any."""

    def texts(self, event: Any) -> Iterator[str]:
        """The generated text a decoded event carries, in order."""
        return iter(())

    # -- the machinery -----------------------------------------------------------------------

    def event(self, data: str, decoded: Any = UNDECODED) -> None:
        """One event's text (``decoded`` if the caller already decoded it)."""
        for marker in self.markers:
            if marker in data:
                if self.cumulative and self.output_tokens is not None:
                    self._latest = data  # supersedes the counts so far: decode it at the end
                    return
                self.read(decode(data) if decoded is UNDECODED else decoded)
                break
        if self.output_tokens is None:
            if self._kept_size + len(data) <= self._max_kept:
                self._kept.append(data)
                self._kept_size += len(data)
            else:
                self.dropped += len(data)
        elif self._kept:
            self._kept.clear()  # the output was reported: the text is no longer needed
            self._texts.clear()
            self._kept_size = 0

    def settle(self) -> None:
        """Read the latest deferred usage report (at the end, or for a snapshot)."""
        if self._latest is not None:
            self.read(decode(self._latest))
            self._latest = None

    def generated_text(self) -> str:
        """The text of the events kept: what the output estimate counts.

        Events are decoded the first time they are asked for, so asking again during a
        stream (snapshots) only decodes the events that came since.
        """
        for data in self._kept[len(self._texts) :]:
            event = decode(data)
            if self.model is None:
                self.read_model(event)
            self._texts.append("".join(self.texts(event)))
        return "".join(self._texts)

    def read_model(self, event: Any) -> None:
        """Name the model from any event, when no usage report named it."""

    def dropped_tokens(self) -> int:
        return math.ceil(self.dropped / BYTES_PER_TOKEN)


class UnknownFormat(UsageExtractor):
    """JSON events of no known provider: nothing is reported; their whole text is counted."""

    def generated_text(self) -> str:
        return "\n".join(self._kept)


class PlainText(UsageExtractor):
    """A ``text/*`` body: the body is the generated text."""

    def generated_text(self) -> str:
        return "".join(self._kept)
