"""An incremental reader of the top-level JSON values in a body, fed arbitrary byte chunks.

- A body that is one JSON object gives that object, once it is complete.
- A body that is a JSON array gives each of its object or array elements as soon as that
  element is complete: Gemini's ``streamGenerateContent`` (without ``alt=sse``) streams a
  JSON array of response objects this way.
- Objects that follow one another (newline-delimited JSON sent as ``application/json``) are
  each given as well.

Only brackets, braces, quotes and backslashes are looked at (with a regular expression, not
byte by byte); a value's text is decoded by the caller. Scalars at the top level are skipped.
A value longer than ``max_value_size`` bytes is dropped (its size added to ``dropped``) instead
of being buffered. Structural bytes are ASCII, and UTF-8 never uses ASCII bytes inside a
multi-byte character, so splitting the bytes is safe.
"""

from __future__ import annotations

import re
from typing import Final

from x402_meter.metering.bounded import BoundedParts

MAX_VALUE_SIZE: Final = 16 * 1024 * 1024

_STRUCTURAL: Final = re.compile(rb'[\[\]{}"]')
_IN_STRING: Final = re.compile(rb'["\\]')
_QUOTE: Final = ord('"')
_BACKSLASH: Final = ord("\\")
_OPEN_ARRAY: Final = ord("[")
_OPENERS: Final = frozenset(b"[{")


class JSONValuesReader:
    def __init__(self, max_value_size: int = MAX_VALUE_SIZE) -> None:
        self._depth = 0
        self._value_depth = 0  # the depth at which values start: 1 inside a top-level array
        self._in_string = False
        self._escaped = False  # the chunk ended on a backslash inside a string
        self._reading = False  # inside a value that will be given
        self._value = BoundedParts(max_value_size)

    @property
    def dropped(self) -> int:
        """Bytes dropped because a value was over the bound."""
        return self._value.dropped

    def feed(self, chunk: bytes) -> list[str]:
        values: list[str] = []
        end = len(chunk)
        start = 0  # where the part of the current value in this chunk begins
        position = 0
        if self._escaped and end:
            self._escaped = False
            position = 1
        while position < end:
            if self._in_string:
                match = _IN_STRING.search(chunk, position)
                if match is None:
                    break
                position = match.end()
                if chunk[match.start()] == _BACKSLASH:
                    if position == end:
                        self._escaped = True
                        break
                    position += 1  # the escaped character, whatever it is
                else:
                    self._in_string = False
                continue
            match = _STRUCTURAL.search(chunk, position)
            if match is None:
                break
            at = match.start()
            byte = chunk[at]
            position = at + 1
            if byte == _QUOTE:
                self._in_string = True
            elif byte in _OPENERS:
                if self._depth == self._value_depth and not self._reading:
                    if self._depth == 0 and byte == _OPEN_ARRAY:
                        self._value_depth = 1  # a top-level array: its elements are the values
                    else:
                        self._reading = True
                        start = at
                self._depth += 1
            elif self._depth > 0:  # a closing bracket or brace
                self._depth -= 1
                if self._reading and self._depth == self._value_depth:
                    self._reading = False
                    value = self._complete(chunk[start:position])
                    if value is not None:
                        values.append(value)
                elif self._depth == 0:
                    self._value_depth = 0  # the top-level array is closed
        if self._reading:
            self._value.hold(chunk[start:])
        return values

    def close(self) -> list[str]:
        """End of body: a value still open is incomplete and given to no one."""
        self._value.clear()
        self._reading = False
        return []

    def _complete(self, last: bytes) -> str | None:
        self._value.hold(last)
        value = self._value.take()
        return None if value is None else value.decode("utf-8", "replace")
