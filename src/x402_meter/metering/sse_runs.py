"""Read the runs of an SSE stream's chunks that share one shape without parsing them.

A model streams thousands of chunks that differ only in their text: ``data: {..."content":
"<text>"...}`` and a blank line (after an ``event:`` line, for formats that name events).
Given that shape (a prefix and a suffix around the text, see
:meth:`~x402_meter.metering.extractor.UsageExtractor.chunk_template`), a batch of whole
events is split on the key that ends the prefix (``"content":"``). A piece that ends with
the suffix, a blank line and the prefix up to the key (the last piece: the suffix and a blank
line), right after a piece that ends with a blank line and that beginning, is one chunk of
that shape; what comes before its suffix is the body of its JSON string, and the text is that
body decoded (as is when it holds no quote, backslash or control character; else by the C
scanner ``json`` uses). Whatever else the batch holds (the first chunk, chunks of another
shape, usage reports) comes back as SSE text of whole events, in order, for the parser.

Exact, not a heuristic: such an event is ``data: prefix + body + suffix`` and a blank line,
the body is one JSON string's body (its first unescaped quote is the suffix's), and any chunk
of that form is valid JSON of the template's shape, whose generated text is that string. A
batch of nothing but such chunks, the common case, takes no Python step per chunk.
"""

from __future__ import annotations

import re
from _json import scanstring
from collections.abc import Callable
from itertools import repeat
from operator import itemgetter
from typing import Final

_NOT_PLAIN: Final = re.compile(r'["\\\x00-\x1f]')
"""What a JSON string's text cannot hold unescaped: a quote, a backslash, a control."""

MAX_CARRY: Final = 64 * 1024
"""Bytes of one unfinished event held back; past that the parser takes the stream over."""

TEXT: Final = True
"""Marks a segment of generated text (else: SSE text of whole events, for the parser)."""


_scanstring: Final[Callable[[str, int], tuple[str, int]]] = scanstring  # C, as json uses
_add_one: Final = (1).__add__
_first, _second = itemgetter(0), itemgetter(1)


def is_plain(text: str) -> bool:
    """No quote, backslash or control character in ``text`` (the first test settles most)."""
    if '"' not in text and "\\" not in text and text.isprintable():
        return True
    return _NOT_PLAIN.search(text) is None


def _json_strings(pieces: list[str], bodies: list[str]) -> str | None:
    """Each body (the start of its piece, up to a quote) decoded as the body of a JSON
    string, joined; None unless each piece's first unescaped quote is the one after its
    body: what ``json.loads`` makes of ``'"' + body + '"'``, for each of them."""
    try:
        scanned = list(map(_scanstring, pieces, repeat(0)))
    except ValueError:  # a raw control character, a bad escape, no closing quote
        return None
    if list(map(_second, scanned)) != list(map(_add_one, map(len, bodies))):
        return None  # an unescaped quote ended one of them early
    return "".join(map(_first, scanned))


def _json_string(piece: str, size: int) -> str | None:
    """:func:`_json_strings` for one piece whose body is ``size`` characters long."""
    try:
        text, end = _scanstring(piece, 0)
    except ValueError:
        return None
    return text if end == size + 1 else None


class SSEChunkRuns:
    """Splits an SSE stream, from an event boundary on, into text runs and other events.

    Fed bytes; holds back the unfinished event at the end of each batch. Only for streams
    whose lines end in ``\\n`` alone (a caller seeing ``\\r`` hands the rest to its parser).
    """

    def __init__(self, prefix: str, suffix: str, event: str | None = None) -> None:
        """``event``: the name of the ``event:`` line each chunk of the shape comes after
        (Anthropic's ``content_block_delta``); ``None``: chunks are a ``data:`` line alone."""
        start = ("" if event is None else f"event: {event}\n") + "data: " + prefix
        closing = prefix.rfind('"', 0, len(prefix) - 1) if prefix.endswith('"') else -1
        cut = prefix.rfind('"', 0, closing) if closing > 0 else -1
        if cut < 0 or "\n" in prefix + suffix + (event or ""):
            raise ValueError("not the template of a JSON string's text")
        self._key = prefix[cut:]
        """The key that ends the prefix, its opening quote included: ``"content":"``."""
        self._head = start[: len(start) - len(self._key)]
        self._end = suffix + "\n\n"
        self._tail = self._end + self._head
        self._after_boundary = "\n\n" + self._head
        if (self._tail + self._key).count(self._key) != 1:
            raise ValueError("the key is in the template's suffix")
        self._before_tail = itemgetter(slice(0, -len(self._tail)))
        self.carry = b""
        """The bytes of the unfinished event at the end of what was fed."""

    def feed(self, chunk: bytes) -> list[tuple[bool, str]]:
        """Segments in stream order: ``(TEXT, text of a run of chunks)`` or ``(not TEXT,
        SSE text of whole events)``. The bytes after the last blank line are carried."""
        data = self.carry + chunk if self.carry else chunk
        end = data.rfind(b"\n\n") + 2
        if end < 2:
            self.carry = data
            return []
        self.carry = data[end:]
        return self.split(str(memoryview(data)[:end], "utf-8", "replace"))

    def split(self, text: str) -> list[tuple[bool, str]]:
        """``text``: whole events, starting at an event boundary and ending with one."""
        key, head, tail, end = self._key, self._head, self._tail, self._end
        after_boundary, search = self._after_boundary, _NOT_PLAIN.search
        pieces = text.split(key)
        last = len(pieces) - 1
        if last > 1 and pieces[0] == head and pieces[last].endswith(end):
            # Each piece between two keys is a chunk's text and the same tail: a batch of
            # nothing but such chunks (the common case) is read without a Python step per
            # chunk (the maps and joins run in C).
            texts = list(map(self._before_tail, pieces[1:last]))
            texts.append("")
            # Each piece ends with the tail: the texts joined by the tail and the key are the
            # text from the first piece on up to the last (a piece shorter than the tail
            # makes the join longer).
            between = (tail + key).join(texts)
            start = len(head) + len(key)
            if len(between) == len(text) - len(pieces[last]) - start and text.startswith(
                between, start
            ):
                texts[-1] = pieces[last][: len(pieces[last]) - len(end)]
                joined = "".join(texts)
                if is_plain(joined):
                    return [(TEXT, joined)]
                decoded = _json_strings(pieces[1:], texts)  # escapes: decoded as JSON would
                if decoded is not None:
                    return [(TEXT, decoded)]
        segments: list[tuple[bool, str]] = []
        run: list[str] = []
        done = 0  # text[:done] is in segments or run
        position = len(pieces[0]) + len(key)  # where pieces[1] starts
        starts = pieces[0] == head or pieces[0].endswith(after_boundary)
        for index in range(1, last + 1):
            piece = pieces[index]
            closing = tail if index < last else end
            size = len(piece) - len(closing)
            text_of_chunk = None
            if starts and piece.endswith(closing):
                plain = search(piece, 0, size) is None
                text_of_chunk = piece[:size] if plain else _json_string(piece, size)
            if text_of_chunk is not None:
                begin = position - len(head) - len(key)
                if begin > done:
                    if run:
                        segments.append((TEXT, "".join(run)))
                        run = []
                    segments.append((not TEXT, text[done:begin]))
                run.append(text_of_chunk)
                done = position + size + len(end)
                starts = True
            else:
                starts = piece.endswith(after_boundary)
            position += len(piece) + len(key)
        if run:
            segments.append((TEXT, "".join(run)))
        if done < len(text):
            segments.append((not TEXT, text[done:]))
        return segments
