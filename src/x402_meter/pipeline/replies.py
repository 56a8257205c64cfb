"""The answers the pipeline gives itself, instead of the app's: refusals and 503s, counted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import Send

from x402_meter.errors import PaymentError, RequestRefusedError
from x402_meter.metrics import MeterMetrics
from x402_meter.protocol.offer import Offer
from x402_meter.responses import send_json, send_payment_required, send_unavailable


class Replies:
    """Sends one request's own answers and counts each outcome in the metrics."""

    def __init__(
        self,
        send: Send,
        metrics: MeterMetrics | None,
        resource_url: Callable[[], str],
        retry_after_seconds: int,
    ) -> None:
        self.send = send
        self.metrics = metrics
        self.resource_url = resource_url
        """Computed only when an answer needs it (most refusals before the offer do not)."""
        self.retry_after_seconds = retry_after_seconds

    def count(self, outcome: str, reason: str | None = None) -> None:
        if self.metrics is not None:
            self.metrics.request(outcome, reason)

    async def refuse_request(self, exc: PaymentError | RequestRefusedError) -> None:
        """A request refused before any offer is made (its body, its model, its prompt)."""
        self.count("refused", exc.reason)
        retry_after = getattr(exc, "retry_after", None)
        headers = None if retry_after is None else [(b"retry-after", b"%d" % retry_after)]
        body = {"reason": exc.reason, "error": exc.message, **getattr(exc, "details", {})}
        await send_json(self.send, exc.status_code, body, headers)

    async def refuse(
        self,
        offer: Offer,
        reason: str,
        message: str,
        status: int,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """A 402 (or 412) with the offer's requirements and why."""
        self.count("challenged" if reason == "payment_required" else "refused", reason)
        await send_payment_required(
            self.send,
            offer,
            self.resource_url(),
            reason=reason,
            message=message,
            status=status,
            headers=headers,
        )

    async def refunded(self, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
        """200: a channel's cooperative refund landed (``PAYMENT-RESPONSE`` says how)."""
        self.count("refunded")
        await send_json(self.send, 200, body, headers)

    async def unavailable(self, message: str) -> None:
        """503: the facilitator could not be reached; the client may retry."""
        self.count("unavailable")
        await send_unavailable(self.send, self.retry_after_seconds, message)
