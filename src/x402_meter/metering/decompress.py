"""Incremental decompression of a response body the app compressed itself (gzip, deflate).

``Content-Encoding: gzip`` (or ``x-gzip``) is read with zlib's gzip framing, several members
in a row included; ``deflate`` is the zlib format (RFC 1950) as the standard says, or raw
deflate (RFC 1951) as some servers send it, told apart by the zlib header's checksum. The
output of each input chunk comes in pieces of at most ``piece_size`` bytes, so a small chunk
that inflates to a lot (a "zip bomb") never sits in memory at once. Corrupt input ends the
output; it never raises.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Final

PIECE_SIZE: Final = 64 * 1024

_GZIP_WBITS: Final = 31  # 16 + 15: gzip header and trailer
_ZLIB_WBITS: Final = 15
_RAW_WBITS: Final = -15

SUPPORTED_ENCODINGS: Final = frozenset({"gzip", "x-gzip", "deflate"})


class Decompressor:
    """Inflates ``gzip``/``x-gzip``/``deflate`` bodies chunk by chunk."""

    def __init__(self, content_encoding: str, piece_size: int = PIECE_SIZE) -> None:
        encoding = content_encoding.strip().lower()
        if encoding not in SUPPORTED_ENCODINGS:
            raise ValueError(f"unsupported content encoding {content_encoding!r}")
        self._gzip = encoding != "deflate"
        self._piece_size = piece_size
        self._head = b""  # deflate: the first bytes, until the format is known
        self._inflater: zlib._Decompress | None = (
            zlib.decompressobj(_GZIP_WBITS) if self._gzip else None
        )
        self.failed = False
        """The input was not valid: the output stopped where it went wrong."""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        if self.failed or not chunk:
            return
        if self._inflater is None:
            self._head += chunk
            if len(self._head) < 2:
                return
            chunk, self._head = self._head, b""
            self._inflater = zlib.decompressobj(_ZLIB_WBITS if _is_zlib(chunk) else _RAW_WBITS)
        try:
            yield from self._inflate(chunk)
        except zlib.error:
            self.failed = True

    def close(self) -> Iterator[bytes]:
        """What the inflater still holds (nothing more for a complete stream)."""
        if self.failed or self._inflater is None:
            return
        try:
            tail = self._inflater.flush()
        except zlib.error:
            self.failed = True
            return
        if tail:
            yield tail

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        inflater = self._inflater
        assert inflater is not None
        while data:
            piece = inflater.decompress(data, self._piece_size)
            if piece:
                yield piece
            data = inflater.unconsumed_tail
            if inflater.eof:
                rest = inflater.unused_data
                if not self._gzip or not rest.strip(b"\0"):
                    return  # anything after a deflate stream, or gzip's zero padding
                inflater = self._inflater = zlib.decompressobj(_GZIP_WBITS)  # next member
                data = rest + data
        while not inflater.eof:  # output still waiting, with no input left to give
            piece = inflater.decompress(b"", self._piece_size)
            if not piece:
                return
            yield piece


def _is_zlib(head: bytes) -> bool:
    """A zlib header: method 8 (deflate) and a 16-bit check value divisible by 31."""
    return head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
