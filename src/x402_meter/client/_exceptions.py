"""The paying client's errors (in the tree of ``x402_meter.errors``; defined here, beside the
client, because ``PayerError`` is also an ``openai.OpenAIError`` where ``openai`` is installed:
the ``openai`` client then raises them as they are, without retrying)."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from x402_meter.errors import X402MeterError

__all__ = [
    "NoPayableOfferError",
    "PayerError",
    "ReceiptUnavailableError",
    "SessionReceiptError",
    "SessionRefundError",
    "SpendCapExceededError",
]


if TYPE_CHECKING:
    _PayerBaseError = X402MeterError
else:
    try:  # the openai client passes its own errors through unwrapped and without retrying
        from openai import OpenAIError as _OpenAIError

        class _PayerBaseError(X402MeterError, _OpenAIError):
            pass

    except ImportError:  # pragma: no cover - openai is optional
        _PayerBaseError = X402MeterError


class PayerError(_PayerBaseError):
    """The paying client did not pay. With ``openai`` installed it is also an
    ``openai.OpenAIError``, so the ``openai`` client raises it as it is, without retrying."""

    reason = "payer_error"


class SpendCapExceededError(PayerError):
    """Paying would go over ``max_per_request`` or ``max_total``; nothing was signed."""

    reason = "spend_cap_exceeded"

    def __init__(
        self,
        cap: Literal["max_per_request", "max_total"],
        *,
        requested: int,
        limit: int,
        left: int,
        decimals: int,
    ) -> None:
        self.cap = cap
        """Which cap: ``"max_per_request"`` or ``"max_total"``."""
        self.requested = requested
        """Atomic units the server asked to authorize (its cheapest payable offer)."""
        self.limit = limit
        """The cap, in atomic units."""
        self.left = left
        """What the cap still allowed, in atomic units."""

        def units(atomic: int) -> str:
            return f"{Decimal(atomic).scaleb(-decimals).normalize():f}"

        if cap == "max_per_request":
            detail = f"above max_per_request ({units(limit)})"
        else:
            detail = f"more than max_total allows ({units(left)} left of {units(limit)})"
        super().__init__(
            f"refusing to sign: the server asks to authorize up to {units(requested)}, {detail}"
        )


class NoPayableOfferError(PayerError):
    """The 402 offered nothing this wallet pays: another network, asset or scheme."""

    reason = "no_payable_offer"


class ReceiptUnavailableError(PayerError):
    """The response carries no receipt, or the receipt could not be fetched."""

    reason = "receipt_unavailable"


class SessionReceiptError(PayerError):
    """A receipt claims a session charge the wallet never signed for (above the answer's
    voucher): the channel is set aside and signs nothing more (its remainder can still be
    taken back)."""

    reason = "session_receipt_invalid"


class SessionRefundError(PayerError):
    """The server did not give a session channel's remainder back (its reason in the
    message); the money stays in the channel, to take back later or to withdraw on chain
    after the channel's withdraw delay."""

    reason = "session_refund_failed"
