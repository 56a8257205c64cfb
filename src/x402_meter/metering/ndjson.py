"""An incremental reader of newline-delimited JSON (``application/x-ndjson``, JSON Lines).

Fed arbitrary byte chunks; gives each complete non-blank line, decoded as UTF-8 (invalid
bytes replaced), without its line end. Splitting on the LF byte is safe in UTF-8: it never
occurs inside a multi-byte character. A line longer than ``max_line_size`` bytes is dropped
(its size added to ``dropped``) instead of being buffered.
"""

from __future__ import annotations

from typing import Final

from x402_meter.metering.bounded import BoundedParts

MAX_LINE_SIZE: Final = 16 * 1024 * 1024


class NDJSONReader:
    def __init__(self, max_line_size: int = MAX_LINE_SIZE) -> None:
        self._max = max_line_size
        self._line_held = BoundedParts(max_line_size)
        self._long_lines = 0  # bytes of whole lines in one chunk that were over the bound

    @property
    def dropped(self) -> int:
        """Bytes dropped because a line was over the bound."""
        return self._line_held.dropped + self._long_lines

    def feed(self, chunk: bytes) -> list[str]:
        if b"\n" not in chunk:
            self._line_held.hold(chunk)
            return []
        first, *middle, last = chunk.split(b"\n")
        lines: list[str] = []
        self._line_held.hold(first)
        line = self._line_held.take()
        if line is not None:
            self._line(line, lines)
        for line in middle:
            self._line(line, lines)
        self._line_held.hold(last)
        return lines

    def close(self) -> list[str]:
        """End of body: a last line without its LF still counts."""
        lines: list[str] = []
        line = self._line_held.take()
        if line is not None:
            self._line(line, lines)
        return lines

    def _line(self, line: bytes, lines: list[str]) -> None:
        if len(line) > self._max:
            self._long_lines += len(line)
            return
        text = line.decode("utf-8", "replace").strip()
        if text:
            lines.append(text)
