"""The bytes of one value (a line, a JSON value) arriving in pieces, held up to a bound."""

from __future__ import annotations


class BoundedParts:
    """Holds the pieces of the value being read; past ``limit`` bytes the value is dropped
    (its bytes counted in ``dropped``, and those of its later pieces too) rather than
    buffered, until it is taken."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        """Bytes dropped because a value was over the bound."""
        self._parts: list[bytes] = []
        self._size = 0
        self._over = False

    def hold(self, piece: bytes) -> None:
        if self._over:
            self.dropped += len(piece)
            return
        if piece:
            self._parts.append(piece)
            self._size += len(piece)
        if self._size > self.limit:
            self.dropped += self._size
            self._parts.clear()
            self._size = 0
            self._over = True

    def take(self) -> bytes | None:
        """The value held (None if it was over the bound); the next one starts empty."""
        value = None if self._over else b"".join(self._parts)
        self.clear()
        return value

    def clear(self) -> None:
        """Forget the value held, without counting it as dropped."""
        self._parts.clear()
        self._size = 0
        self._over = False
