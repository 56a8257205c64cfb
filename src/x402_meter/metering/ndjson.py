"""An incremental reader of newline-delimited JSON (``application/x-ndjson``, JSON Lines).

Fed arbitrary byte chunks; gives each complete non-blank line, decoded as UTF-8 (invalid
bytes replaced), without its line end. Splitting on the LF byte is safe in UTF-8: it never
occurs inside a multi-byte character. A line longer than ``max_line_size`` bytes is dropped
(its size added to ``dropped``) instead of being buffered.
"""

from __future__ import annotations

from typing import Final

MAX_LINE_SIZE: Final = 16 * 1024 * 1024


class NDJSONReader:
    def __init__(self, max_line_size: int = MAX_LINE_SIZE) -> None:
        self._max = max_line_size
        self._parts: list[bytes] = []
        self._size = 0
        self._skipping = False
        self.dropped = 0
        """Bytes dropped because a line was over the bound."""

    def feed(self, chunk: bytes) -> list[str]:
        if b"\n" not in chunk:
            self._hold(chunk)
            return []
        first, *middle, last = chunk.split(b"\n")
        lines: list[str] = []
        if self._skipping:
            self.dropped += len(first)
            self._skipping = False
        else:
            self._parts.append(first)
            self._line(b"".join(self._parts), lines)
        self._parts.clear()
        self._size = 0
        for line in middle:
            self._line(line, lines)
        self._hold(last)
        return lines

    def close(self) -> list[str]:
        """End of body: a last line without its LF still counts."""
        lines: list[str] = []
        if not self._skipping:
            self._line(b"".join(self._parts), lines)
        self._parts.clear()
        self._size = 0
        self._skipping = False
        return lines

    def _hold(self, piece: bytes) -> None:
        if self._skipping:
            self.dropped += len(piece)
            return
        if piece:
            self._parts.append(piece)
            self._size += len(piece)
        if self._size > self._max:
            self.dropped += self._size
            self._parts.clear()
            self._size = 0
            self._skipping = True

    def _line(self, line: bytes, lines: list[str]) -> None:
        if len(line) > self._max:
            self.dropped += len(line)
            return
        text = line.decode("utf-8", "replace").strip()
        if text:
            lines.append(text)
