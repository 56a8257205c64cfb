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

Kept events are decoded when their text is taken (:meth:`UsageExtractor.take_text`: a
snapshot, or the end) and then let go: the meter counts the text as it comes. A run of
stream chunks that all have one shape may arrive as text already (``keep_text``): see
:meth:`UsageExtractor.chunk_template`.
"""

from __future__ import annotations

import json
import math
import re
from bisect import bisect_right
from collections.abc import Callable, Iterator
from itertools import accumulate
from itertools import count as counting
from operator import add
from typing import Any, ClassVar, Final, cast

from x402_meter.metering.sse_runs import is_plain
from x402_meter.metering.tokenizer import BYTES_PER_TOKEN, TokenTally

MAX_KEPT_SIZE: Final = 16 * 1024 * 1024
"""Characters of event text kept for the fallback count. Past that, a meter's running count
takes the text kept so far (the extractor's ``tally``); without one, events count by size."""

_BULK_FROM: Final = 8
"""Fewer events than this go through event() one by one: what bulk saves, it saves on many."""

UNDECODED: Final[Any] = object()
"""Marks an event not decoded yet (``None`` is a valid decoded JSON value)."""


class KnownText(str):
    """Generated text kept as text (read without decoding its events), among kept events."""

    __slots__ = ()


# What json.loads(text) runs, called directly: the C scanner of a default decoder, between
# the JSON whitespace json.decoder skips. It saves json.loads' Python layers (a third of
# the time of decoding a streamed chunk); the result is the same, a BOM included (no value).
_decoder: Final[Any] = json.JSONDecoder()  # its scan_once is not in the type stubs
_scan_once: Final[Callable[[str, int], tuple[Any, int]]] = _decoder.scan_once
_skip_whitespace: Final = cast(
    "Callable[[str, int], re.Match[str]]", re.compile(r"[ \t\n\r]*").match
)  # it always matches: a run of no whitespace is a match too


def decode(data: str) -> Any:
    """The JSON value of ``data``, or ``None`` if it is not JSON (or is nested too deep)."""
    try:
        value, end = _scan_once(data, _skip_whitespace(data, 0).end())
    except (StopIteration, ValueError, RecursionError):  # RecursionError: "[[[[..." too deep
        return None
    if end != len(data) and _skip_whitespace(data, end).end() != len(data):
        return None  # extra data after the value
    return value


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


_TEMPLATE_TRIES: Final = 8
"""Batches a meter looks for the chunks' shape in, one after the other, at first."""
_TEMPLATE_RETRY_EVERY: Final = 16
"""Then it looks again in one batch out of so many."""


def _template(
    data: str, text: str, key: str, other_keys: tuple[str, ...]
) -> tuple[str, str] | None:
    """The text before and after the text of a decoded chunk whose only text is one
    ``key:"..."`` string with no escape in the whole chunk, else None.

    Another chunk made of the same prefix and suffix around a string with no quote,
    backslash or control character is valid JSON of the same shape, so its text is that
    string: exactly what decoding it would give. With no backslash in the chunk, every key
    is written as it reads, so a single ``key`` and none of the other text keys means the
    text came from that string.
    """
    if not text or "\\" in data or any(other in data for other in other_keys):
        return None
    opening = key + ':"'
    start = data.find(opening)
    if start < 0 or data.count(key) != 1:
        return None
    begin = start + len(opening)
    end = data.find('"', begin)
    if end < 0 or data[begin:end] != text:
        return None
    return data[:begin], data[end:]


_JSON_INTEGER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)")


def _numbered(prefix: str, key: str | None) -> tuple[str, str] | None:
    """``prefix`` before and after the integer value of ``key`` in it, if it holds one.

    With no backslash in the chunk (see :func:`_template`), ``key`` in it is a key, not
    text: another integer in its place makes valid JSON of the same shape and text.
    """
    if key is None:
        return None
    at = prefix.find(key)
    if at < 0:
        return None
    number = _JSON_INTEGER.match(prefix, at + len(key))
    if number is None:
        return None
    return prefix[: number.start()], prefix[number.end() :]


def _numbered_start(data: str, head: str, middle: str) -> int:
    """Where the text starts in ``data`` if it is ``head``, an integer, ``middle`` and
    the rest; else -1."""
    if not data.startswith(head):
        return -1
    number = _JSON_INTEGER.match(data, len(head))
    if number is None or not data.startswith(middle, number.end()):
        return -1
    return number.end() + len(middle)


def _ends(events: list[str]) -> list[int]:
    """Where each event ends in the events joined by line ends, its line end included."""
    return list(map(add, accumulate(map(len, events)), counting(1)))


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
    final_reports: ClassVar[bool] = False
    """Whether a whole usage report (:meth:`reports_output`) replaces everything counted
    before it, earlier reports included (a ``cumulative`` format whose report has both
    sides), so that a meter may leave the events before one unread."""
    model_paths: ClassVar[tuple[tuple[str, ...], ...]] = ()
    """Where events name the model, e.g. ``(("model",),)``: see :meth:`read_model`."""
    text_key: ClassVar[str | None] = None
    """The key (quoted) of the one JSON string a stream's chunks carry their text in, for a
    format whose chunks share one shape that differs only in that text (``'"content"'``):
    see :meth:`chunk_template`. ``None``: no such shape."""
    other_text_keys: ClassVar[tuple[str, ...]] = ()
    """The starts of the other keys (quoted) :meth:`texts` reads text from: a chunk holding
    one is never a template."""
    chunk_event: ClassVar[str | None] = None
    """The SSE event name those chunks come under, for a format that names its events."""
    numbered_key: ClassVar[str | None] = None
    """A key (quoted, with its colon) whose integer value changes from chunk to chunk
    (``'"sequence_number":'``): chunks that differ in it too still share the shape, for
    :meth:`text_of` (a meter cannot read runs of them: :meth:`chunk_template` is None)."""

    def __init__(self, max_kept_size: int = MAX_KEPT_SIZE) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cached_input_tokens = 0
        self.model: str | None = None
        self.dropped = 0
        """Characters of events that were neither kept nor decoded (over the budget)."""
        self._max_kept = max_kept_size
        self.tally: TokenTally | None = None
        """Where kept text is counted when the budget fills (a meter's running count)."""
        self._kept: list[str] = []
        self._kept_size = 0
        self._latest: str | None = None
        self._template: tuple[str, str] | None = None
        self._numbered: tuple[str, str] | None = None
        """The template's prefix before and after the ``numbered_key``'s value, if it has one."""
        self._template_model: str | None = None
        """The model the template's chunk names: every chunk of that shape names it too."""
        self._batches_asked = 0
        self.accelerate = True
        """Whether the fast paths run (chunk templates, events kept in bulk); a meter sets
        it to its own ``accelerate``. Off, every kept event is decoded, one by one."""

    # -- what each provider defines ----------------------------------------------------------

    @staticmethod
    def recognises(event: dict[str, Any]) -> bool:
        """Whether a decoded event is in this provider's format."""
        return False

    def read(self, event: Any) -> None:
        """Take the counts (and the model) a decoded event reports, if any."""

    def reports_output(self, event: Any) -> bool:
        """Whether :meth:`read` would take an output count from this decoded event."""
        return False

    def texts(self, event: Any) -> Iterator[str]:
        """The generated text a decoded event carries, in order."""
        return iter(())

    def text(self, event: Any) -> str:
        """All of :meth:`texts` as one string (providers may override it with a faster one)."""
        return "".join(self.texts(event))

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
            self._keep(data)
        elif self._kept:
            self._forget_kept()

    def events(self, events: list[str]) -> None:
        """:meth:`event` for each of ``events`` (undecoded), in order.

        Only the events holding a marker go through :meth:`event` one by one; the runs of
        events between them are kept (or not) in bulk. The markers are found in the events
        joined by line ends: a marker has no line end, so it cannot match across two events.
        """
        if len(events) < _BULK_FROM or not self.accelerate:
            event = self.event
            for data in events:
                event(data)
            return
        if not self.markers:
            self._keep_all(events)
            return
        joined = "\n".join(events)
        if self.cumulative and self.output_tokens is not None:
            # All event() still does: the last report in them becomes the latest (and no
            # text is kept once the output is reported).
            if self._kept:
                self._forget_kept()
            at = max(map(joined.rfind, self.markers))
            if at >= 0:
                self._latest = events[bisect_right(_ends(events), at)]
            return
        ends: list[int] | None = None
        marked: set[int] = set()
        for marker in self.markers:
            found = joined.find(marker)
            while found >= 0:
                if ends is None:
                    ends = _ends(events)
                index = bisect_right(ends, found)
                marked.add(index)
                found = joined.find(marker, ends[index])
        start = 0
        for index in sorted(marked):
            self._keep_all(events[start:index])
            self.event(events[index])
            start = index + 1
        self._keep_all(events[start:] if start else events)

    def _keep_all(self, events: list[str]) -> None:
        """What :meth:`event` does with events that hold no marker, for all of them at once."""
        if not events:
            return
        if self.output_tokens is None:
            size = sum(map(len, events))
            if self._kept_size + size <= self._max_kept:
                self._kept += events
                self._kept_size += size
                return
            for data in events:
                self._keep(data)
        elif self._kept:
            self._forget_kept()

    def settle(self) -> None:
        """Read the latest deferred usage report (at the end, or for a snapshot)."""
        if self._latest is not None:
            self.read(decode(self._latest))
            self._latest = None

    def _room_for(self, size: int) -> bool:
        """Whether ``size`` more characters can be kept: with a ``tally``, the text kept so
        far is counted into it to make room; without one, what does not fit is dropped."""
        if self._kept_size + size <= self._max_kept:
            return True
        if self.tally is None or not self._kept:
            return False
        self.tally.add(self.take_text())
        return size <= self._max_kept

    def keep_text(self, text: str) -> None:
        """Generated text read without decoding its events (a run of chunks of one shape):
        kept in their place, within the same budget."""
        if self.output_tokens is None:
            self._keep(KnownText(text))

    def _keep(self, data: str) -> None:
        """Keep one event (or known text) for the fallback count, within the budget."""
        if self._room_for(len(data)):
            self._kept.append(data)
            self._kept_size += len(data)
        else:
            self.dropped += len(data)

    def _take_kept(self) -> list[str]:
        """The events (or known text) kept so far, no longer kept."""
        kept, self._kept, self._kept_size = self._kept, [], 0
        return kept

    def _forget_kept(self) -> None:
        """The output was reported: the text kept for an estimate is no longer needed."""
        self._kept.clear()
        self._kept_size = 0

    def take_text(self) -> str:
        """The generated text of the events kept since the last call: what the output
        estimate counts. The events are let go: a running count has them now."""
        if not self._kept:
            return ""
        text_of = self.text_of
        kept = self._take_kept()
        text = "".join([data if type(data) is KnownText else text_of(data) for data in kept])
        if self.model is None and any(type(data) is KnownText for data in kept):
            self.model = self.known_text_model()
        return text

    def known_text_model(self) -> str | None:
        """The model the chunks kept as text name (decoding them would have named it)."""
        return self._template_model

    def chunk_template(self) -> tuple[str, str] | None:
        """The JSON before and after the text of a stream's chunks, if they all share it:
        each ``prefix + s + suffix`` with ``s`` free of quotes, backslashes and control
        characters is a chunk whose generated text is ``s``. Lets a meter read such runs
        without decoding them; ``None`` if the format has no such shape (no ``text_key``)
        or none was seen yet.

        Found from the last chunk kept, decoded here: asked after every batch until one is
        found, for the first batches, then after every sixteenth (a stream of tool calls or
        of reasoning has no such shape; its answer that follows may).
        """
        if not self.accelerate:
            return None
        if self._template is None and self._kept and self.text_key is not None:
            self._batches_asked += 1
            asked = self._batches_asked
            if asked <= _TEMPLATE_TRIES or asked % _TEMPLATE_RETRY_EVERY == 0:
                data = self._kept[-1]
                if type(data) is not KnownText and not any(m in data for m in self.markers):
                    self._learn_template(data, decode(data))
        return self._template if self._numbered is None else None

    def _learn_template(self, data: str, event: Any) -> str:
        """The text of a decoded chunk; its shape becomes the template if it can be one (a
        template, once found, holds for the whole stream: the last one is kept past chunks
        of other shapes)."""
        text = self.text(event)
        assert self.text_key is not None
        template = _template(data, text, self.text_key, self.other_text_keys)
        if template is not None:
            self._template, self._template_model = template, self.model_of(event)
            self._numbered = _numbered(template[0], self.numbered_key)
        return text

    def text_of(self, data: str) -> str:
        """The generated text of one kept event (naming the model, if still unknown).

        The chunks of one stream differ only in the text they carry: past the first, a
        chunk that is the template's with another plain string as its text needs no
        decoding (see :func:`_template`).
        """
        template = self._template if self.accelerate else None
        if template is not None:
            prefix, suffix = template
            numbered = self._numbered
            if numbered is None:
                start = len(prefix) if data.startswith(prefix) else -1
            else:
                start = _numbered_start(data, *numbered)
            if start >= 0 and data.endswith(suffix) and len(data) >= start + len(suffix):
                content = data[start : len(data) - len(suffix)]
                if is_plain(content):
                    if self.model is None:  # what decoding this chunk would have read
                        self.model = self._template_model
                    return content
        event = decode(data)
        if self.model is None:
            self.read_model(event)
        if self.text_key is None or not self.accelerate:
            return self.text(event)
        return self._learn_template(data, event)

    def read_model(self, event: Any) -> None:
        """Name the model from any event, if it names one."""
        model = self.model_of(event)
        if model is not None:
            self.model = model

    def model_of(self, event: Any) -> str | None:
        """The model an event names: at the first of ``model_paths`` holding a name."""
        for path in self.model_paths:
            model = field(event, *path)
            if isinstance(model, str) and model:
                return model
        return None

    def dropped_tokens(self) -> int:
        return math.ceil(self.dropped / BYTES_PER_TOKEN)


class UnknownFormat(UsageExtractor):
    """JSON events of no known provider: nothing is reported; their whole text is counted,
    one event per line."""

    def __init__(self, max_kept_size: int = MAX_KEPT_SIZE) -> None:
        super().__init__(max_kept_size)
        self._taken = False

    def take_text(self) -> str:
        if not self._kept:
            return ""
        text = "\n".join(self._take_kept())
        if self._taken:
            return "\n" + text
        self._taken = True
        return text


class PlainText(UsageExtractor):
    """A ``text/*`` body: the body is the generated text."""

    def take_text(self) -> str:
        return "".join(self._take_kept())
