"""The meter interface: bytes in as they are forwarded, a usage count out at the end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

UsageSource = Literal["reported", "estimated"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one response used. ``source`` says whether the provider reported them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    source: UsageSource = "reported"


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """What a meter factory may look at to choose a meter."""

    status: int
    content_type: str
    """Lower-cased media type without parameters, e.g. ``text/event-stream``."""
    content_encoding: str | None = None


class Meter(Protocol):
    """Reads a response body incrementally. Must never raise on odd input: it only counts."""

    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> Usage:
        """The count so far; called once, also for truncated or abandoned bodies."""
        ...


MeterFactory = Callable[[ResponseInfo], Meter]
