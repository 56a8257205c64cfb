"""What the gateway's layers tell each other about one request, for logs and metrics.

The access log layer starts a ``RequestLabels`` for each request; the policy fills in the
upstream and the plan's model label (both from the config: bounded), the forwarder the
upstream's outcome. The meter's own metrics read them through ``current_labels``, since
the meter knows nothing of upstreams.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Final


class RequestLabels:
    __slots__ = ("model", "outcome", "upstream", "upstream_seconds")

    def __init__(self) -> None:
        self.upstream = ""
        """The upstream's name, once the request matched a route."""
        self.model = ""
        """The plan's model name or pattern that matched (never the caller's own string)."""
        self.outcome = ""
        """How the upstream call ended: ``2xx``..``5xx``, ``timeout``, ``unavailable``,
        ``auth_failed``; empty when no call was made."""
        self.upstream_seconds: float | None = None
        """From sending the request upstream to its answer's headers."""


current_labels: Final[ContextVar[RequestLabels | None]] = ContextVar(
    "x402_gateway_labels", default=None
)
