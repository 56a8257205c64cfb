"""Exceptions, each with a stable machine-readable ``reason`` that HTTP answers carry too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class X402MeterError(Exception):
    """Base class of every error x402-meter raises."""

    reason: ClassVar[str] = "x402_meter_error"


class ConfigurationError(X402MeterError, ValueError):
    """The middleware or a price was configured with a value it cannot use."""

    reason = "configuration_error"


class PaymentError(X402MeterError):
    """A payment was refused; ``status_code`` is the HTTP answer (400, 402 or 412)."""

    reason = "invalid_payment"
    status_code: int = 402

    def __init__(self, reason: str, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason  # type: ignore[misc]  # instance value refines the class default
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class PaymentAlreadyUsedError(PaymentError):
    """This authorization was already reserved by another request."""

    def __init__(self) -> None:
        super().__init__(
            "payment_already_used",
            "this payment authorization has already been used; sign a new one",
        )


class RequestRefusedError(X402MeterError):
    """A metered request was refused before any payment was looked at: its body is too large
    (413), too slow (408), the server is reading too many bodies at once (503), or the
    route is priced by model and the body names none it has a price for (400)."""

    reason = "request_refused"
    status_code: int = 400

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        status_code: int,
        retry_after: int | None = None,
        details: Mapping[str, object] | None = None,
    ) -> None:
        """``details`` go into the HTTP answer beside ``reason`` and ``error`` (the models a
        route has prices for, ...): what the client needs to ask again correctly."""
        super().__init__(message)
        self.reason = reason  # type: ignore[misc]  # instance value refines the class default
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after
        self.details = dict(details or {})


class FacilitatorUnavailableError(X402MeterError):
    """The facilitator could not be reached or answered with an error: try again later."""

    reason = "facilitator_unavailable"
