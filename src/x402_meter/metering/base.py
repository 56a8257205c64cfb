"""The meter interface: bytes in as they are forwarded, a usage count out at the end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

UsageSource = Literal["reported", "estimated"]
"""``reported``: the provider's own count; ``estimated``: counted here from the text."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one response used, each side marked with where its count came from."""

    input_tokens: int = 0
    """All prompt tokens, cached ones included."""
    output_tokens: int = 0
    """All generated tokens, reasoning ("thinking") tokens included."""
    cached_input_tokens: int = 0
    """The part of ``input_tokens`` read from a prompt cache."""
    input_source: UsageSource = "reported"
    output_source: UsageSource = "reported"
    model: str | None = None
    """The model as the response names it, when it does."""

    @property
    def source(self) -> UsageSource:
        """``reported`` only if both sides were reported by the provider."""
        if self.input_source == "reported" and self.output_source == "reported":
            return "reported"
        return "estimated"


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """What a meter factory may look at to choose a meter."""

    status: int
    content_type: str
    """Lower-cased media type without parameters, e.g. ``text/event-stream``."""
    content_encoding: str | None = None
    """The response's ``Content-Encoding`` (lower-cased) if the app compressed it."""
    request_body: bytes = b""
    """The request body as the app received it (may be truncated; ``b""`` if none)."""
    request_path: str = ""


class Meter(Protocol):
    """Reads a response body incrementally. Must never raise on odd input: it only counts."""

    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> Usage:
        """The count so far; called once, also for truncated or abandoned bodies."""
        ...

    def snapshot(self) -> Usage | None:
        """The count so far, mid-stream, without ending it (for checkpoints and the cap);
        ``None``, the default for a meter that subclasses ``Meter``: it cannot tell."""
        return None


MeterFactory = Callable[[ResponseInfo], Meter]
