"""An incremental Server-Sent Events parser (WHATWG HTML, "event stream interpretation").

Fed arbitrary byte chunks: a UTF-8 character, a CRLF or a whole event may be split anywhere.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Final

_LINE_END: Final = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        return self._lines(self._buffer + text)

    def close(self) -> list[SSEEvent]:
        """End of stream: a final unterminated line is processed, an undispatched event dropped."""
        rest = self._buffer + self._decoder.decode(b"", final=True)
        self._buffer = ""
        events = self._lines(rest + "\n") if rest else []
        self._data.clear()
        return events

    def _lines(self, text: str) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        if "\r" not in text:
            # Fast path: nearly every server ends lines with LF alone.
            *lines, self._buffer = text.split("\n")
            for line in lines:
                self._line(line, events)
            return events
        position = 0
        for match in _LINE_END.finditer(text):
            # A CR at the very end may be the first half of a CRLF split across chunks.
            if match.group() == "\r" and match.end() == len(text):
                break
            self._line(text[position : match.start()], events)
            position = match.end()
        self._buffer = text[position:]
        return events

    def _line(self, line: str, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent("\n".join(self._data), self._event or "message", self._id))
            self._data.clear()
            self._event = ""
            return
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
