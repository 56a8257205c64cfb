"""An incremental Server-Sent Events parser (WHATWG HTML, "event stream interpretation").

Fed arbitrary byte chunks: a UTF-8 character, a CRLF or a whole event may be split anywhere.
Memory is bounded: a line or an event longer than ``max_event_size`` characters is dropped
(and its size added to ``dropped``) instead of being buffered.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Any, Final

_LINE_END: Final = re.compile(r"\r\n|\r|\n")
_NAMED_RUN: Final = re.compile(r"(?:(?:event: [^\n]*\n)?data: [^\n]*\n\n)+")
"""Events of one ``data: `` line, each after an ``event: `` line or not (Anthropic's)."""
_NAMED_DATA: Final = re.compile(r"data: ([^\n]*)\n\n")
_ANY_LINE_END: Final = re.compile(r"[\r\n]")

MAX_EVENT_SIZE: Final = 16 * 1024 * 1024
"""The default bound, in characters, of one line and of one event's data."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    """``feed`` gives whole events; ``feed_data`` only their data (what the meters read)."""

    def __init__(self, max_event_size: int = MAX_EVENT_SIZE, *, accelerate: bool = True) -> None:
        self._accelerate = accelerate
        """Off: every line goes through :meth:`_line` (the reference the fast paths match)."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._max = max_event_size
        self._buffer = ""
        self._started = False
        self._data: list[str] = []
        self._size = 0
        self._event = ""
        self._id: str | None = None
        self._skipping_line = False
        self._oversized = False
        self._data_only = False
        self.dropped = 0
        """Characters dropped because a line or an event was over the bound."""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._data_only = False
        events: list[SSEEvent] = []
        self._feed(chunk, events)
        return events

    def feed_data(self, chunk: bytes) -> list[str]:
        """As :meth:`feed`, but only the ``data`` of each event (no event objects are made)."""
        self._data_only = True
        data: list[str] = []
        self._feed(chunk, data)
        return data

    def feed_text(self, text: str) -> list[str]:
        """:meth:`feed_data` for text already decoded (the parser's own decoder holding
        nothing, as :attr:`idle` says)."""
        self._data_only = True
        data: list[str] = []
        self._text(text, data)
        return data

    @property
    def idle(self) -> bool:
        """Between two events, with nothing held: the stream from here on may be read by
        someone else for a while (see ``sse_runs``), and given back at an event boundary."""
        return (
            self._started
            and not (self._buffer or self._data or self._event or self._oversized)
            and not self._skipping_line
            and not self._decoder.getstate()[0]
        )

    def close(self) -> list[SSEEvent]:
        """End of stream: a final unterminated line is processed, an undispatched event dropped."""
        self._data_only = False
        events: list[SSEEvent] = []
        self._close(events)
        return events

    def close_data(self) -> list[str]:
        """As :meth:`close`, but only the ``data`` of each event."""
        self._data_only = True
        data: list[str] = []
        self._close(data)
        return data

    def _feed(self, chunk: bytes, events: list[Any]) -> None:
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._skipping_line:
            text = self._skip(text)
        self._text(text, events)

    def _text(self, text: str, events: list[Any]) -> None:
        """Decoded text, after what was held of an unfinished line."""
        self._lines(self._buffer + text, events)
        if len(self._buffer) > self._max:
            self._drop_long_line()

    def _close(self, events: list[Any]) -> None:
        rest = self._decoder.decode(b"", final=True)
        if self._skipping_line:
            rest = self._skip(rest)
        rest = self._buffer + rest
        self._buffer = ""
        if rest:
            self._lines(rest + "\n", events)
        self._data.clear()
        self._size = 0

    def _drop_long_line(self) -> None:
        """A line over the bound, its end not in sight: drop it and the event it belongs to."""
        ended = self._buffer.endswith("\r")  # a line end, or the CR of a CRLF
        if ended and len(self._buffer) - 1 <= self._max:
            return
        self.dropped += len(self._buffer)
        self._oversized = True
        self._data.clear()
        if ended:
            self._buffer = ":\r"  # a comment line stands in for it; the CR is kept
        else:
            self._buffer = ""
            self._skipping_line = True

    def _skip(self, text: str) -> str:
        """The rest of an over-long line is dropped up to its line end, which is kept."""
        end = _ANY_LINE_END.search(text)
        if end is None:
            self.dropped += len(text)
            return ""
        self._skipping_line = False
        self.dropped += end.start()
        return ":" + text[end.start() :]  # a comment line stands in for the dropped one

    def _lines(self, text: str, events: list[Any]) -> None:
        if not self._accelerate:
            self._each_line(text, events)
            return
        if "\r" not in text:
            # Fast path: nearly every server ends lines with LF alone.
            self._lf_lines(text, events)
            return
        # A CR at the very end may be the first half of a CRLF split across chunks.
        cr_at_end = text.endswith("\r")
        lf = (text[:-1] if cr_at_end else text).replace("\r\n", "\n")
        if "\r" not in lf:
            # Every line end a CRLF (Google's): the same lines with LF alone.
            self._lf_lines(lf, events)
            if cr_at_end:
                self._buffer += "\r"
            return
        self._each_line(text, events)

    def _each_line(self, text: str, events: list[Any]) -> None:
        """Every line of ``text`` through :meth:`_line`; an unfinished one (or a CR that may
        be the first half of a CRLF) is held."""
        position = 0
        for match in _LINE_END.finditer(text):
            if match.group() == "\r" and match.end() == len(text):
                break
            self._line(text[position : match.start()], events)
            position = match.end()
        self._buffer = text[position:]

    def _lf_lines(self, text: str, events: list[Any]) -> None:
        """:meth:`_lines` for text whose line ends are all LF."""
        if self._data or self._event or self._oversized:
            # The event in progress (a chunk ended in it), line by line up to its end:
            # what follows may be a run.
            end = text.find("\n\n") + 2
            if end > 1:
                for line in text[: end - 1].split("\n"):
                    self._line(line, events)
                text = text[end:]
        if not (self._data or self._event or self._oversized):
            text = self._simple_events(text, events)
        *lines, self._buffer = text.split("\n")
        for line in lines:
            self._line(line, events)

    def _simple_events(self, text: str, events: list[Any]) -> str:
        """Dispatch the leading run of ``data: ...`` one-line events, if that is all ``text``
        holds up to its last blank line; return what is left for the line-by-line parser.

        Checked and split with ``str`` methods, not line by line: the run starts with
        ``data: ``, splits on ``\\n\\ndata: ``, and has no line end but the two after each
        event. Between events the parser holds no state an event depends on but the last
        event id, so these are the events the line-by-line parser would give (the run being
        shorter than the bound, none of its lines or events can be over it).

        For :meth:`feed_data` (the data is the same whatever an event's name), a run whose
        events may each start with an ``event: `` line (Anthropic's) is checked and its
        data found by two regular expressions. In it, a ``data: `` match starts a line: one
        inside a name or a value would need a blank line right after it, and neither holds
        a line end.
        """
        named = self._data_only and text.startswith("event: ")
        if not (named or text.startswith("data: ")):
            return text
        end = text.rfind("\n\n") + 2
        if end < 8 or end > self._max:
            return text
        if named:
            if _NAMED_RUN.fullmatch(text, 0, end) is None:
                return text
            events += _NAMED_DATA.findall(text, 0, end)
            return text[end:]
        data = text[6 : end - 2].split("\n\ndata: ")
        if text.count("\n", 0, end) != 2 * len(data):
            return text
        if self._data_only:
            events += data
        else:
            last_id = self._id
            events += [SSEEvent(value, "message", last_id) for value in data]
        return text[end:]

    def _line(self, line: str, events: list[Any]) -> None:
        if not line:
            if self._data and not self._oversized:
                data = "\n".join(self._data)
                if self._data_only:
                    events.append(data)
                else:
                    events.append(SSEEvent(data, self._event or "message", self._id))
            self._data.clear()
            self._size = 0
            self._oversized = False
            self._event = ""
            return
        if len(line) > self._max:  # the same bound as for a line still being received
            self.dropped += len(line)
            self._oversized = True
            self._data.clear()
            return
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            if self._oversized:
                self.dropped += len(value)
                return
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self._max:
                self.dropped += self._size
                self._data.clear()
                self._oversized = True
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
