r"""Every exception x402-meter raises, in one tree, so that callers can catch at the right level.

Each has a stable machine-readable ``reason`` (the one HTTP answers carry too); where an
exception used to be a standard one (``ValueError``, ``OSError``, ...), it still is, so the
``except`` clauses written against that keep working::

    X402MeterError                       reason
    ├── ConfigurationError (ValueError)  configuration_error: a bad option or price
    │   ├── FacilitatorConfigError       facilitator_config_error: the facilitator's chain/key
    │   ├── FacilitatorAccessError       facilitator_access_error: its API keys or payees
    │   └── GatewayConfigError           gateway_config_error: a gateway.toml setting
    ├── PaymentError                     per refusal (400, 402 or 412 to the client)
    │   └── PaymentAlreadyUsedError      payment_already_used
    ├── RequestRefusedError              per refusal (400, 408, 413 or 503, before payment)
    ├── FacilitatorUnavailableError      facilitator_unavailable: try again later
    ├── ChargeUnavailableError           charge_unavailable: a channel's charge, retried later
    ├── StreamCapped (OSError)           stream_capped: the app's answer hit the maximum
    ├── LeaseLostError                   lease_lost: another worker settles this row
    ├── MalformedRequestError (ValueError)  per field: a verify/settle body refused
    ├── NotCanonicalUintError (ValueError)  not_canonical_uint: a uint256 spelled otherwise
    ├── TokenizerUnavailableError (RuntimeError)  tokenizer_unavailable
    ├── PayerError *                     payer_error: the paying client did not pay
    │   ├── SpendCapExceededError *      spend_cap_exceeded: over max_per_request/max_total
    │   ├── NoPayableOfferError *        no_payable_offer: no network/asset/scheme it pays
    │   ├── ReceiptUnavailableError *    receipt_unavailable
    │   ├── SessionReceiptError *        session_receipt_invalid: a charge above the voucher
    │   └── SessionRefundError *         session_refund_failed: a channel's remainder kept
    └── DevStackError                    devstack_error: the local stack (x402-meter dev)
        ├── AnvilNotFoundError (FileNotFoundError)
        ├── AnvilInstallError (RuntimeError)
        ├── PortInUseError (OSError)
        ├── StartupError (RuntimeError)
        ├── DeploymentError (RuntimeError)
        └── VyperNotInstalledError (RuntimeError)

\* The paying client's errors are defined beside it, in ``x402_meter.client._exceptions``
(and exported by ``x402_meter.client`` and ``x402_meter``): ``PayerError`` is also an
``openai.OpenAIError`` when the ``openai`` package is installed, so that the ``openai`` client
raises them as they are, without retrying, and a server that never pays is not made to import
``openai`` for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

__all__ = [
    "AnvilInstallError",
    "AnvilNotFoundError",
    "ChargeUnavailableError",
    "ConfigurationError",
    "DeploymentError",
    "DevStackError",
    "FacilitatorAccessError",
    "FacilitatorConfigError",
    "FacilitatorUnavailableError",
    "GatewayConfigError",
    "LeaseLostError",
    "MalformedRequestError",
    "NotCanonicalUintError",
    "PaymentAlreadyUsedError",
    "PaymentError",
    "PortInUseError",
    "RequestRefusedError",
    "StartupError",
    "StreamCapped",
    "TokenizerUnavailableError",
    "VyperNotInstalledError",
    "X402MeterError",
]


class X402MeterError(Exception):
    """Base class of every error x402-meter raises."""

    reason: ClassVar[str] = "x402_meter_error"


# -- configuration -------------------------------------------------------------------------


class ConfigurationError(X402MeterError, ValueError):
    """The middleware or a price was configured with a value it cannot use."""

    reason = "configuration_error"


class FacilitatorConfigError(ConfigurationError):
    """The facilitator cannot start with the given chain, network or key."""

    reason = "facilitator_config_error"


class FacilitatorAccessError(ConfigurationError):
    """The facilitator's keys or payees are configured with a value it cannot use."""

    reason = "facilitator_access_error"


class GatewayConfigError(ConfigurationError):
    """``x402-meter gateway``'s configuration has a value it cannot use; the message names
    the setting (``upstreams.openai.plans[0].price_per_million.input: ...``)."""

    reason = "gateway_config_error"


# -- the middleware: admission, serving, settlement ----------------------------------------------


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


class ChargeUnavailableError(X402MeterError):
    """A session's charge could not be written to its channel store now: the settlement
    worker tries again later (as when the facilitator is away)."""

    reason = "charge_unavailable"


class StreamCapped(X402MeterError, OSError):  # noqa: N818 - named for what happened, like ConnectionResetError
    """Raised to the app on ``send`` after its answer was ended (at the authorized maximum,
    or early: a void, the deadline), on every ``send`` from then on.

    An ``OSError``, as ASGI servers raise when the client has gone: apps already stop on it.
    An app may catch it to clean up; the middleware does not pass it (or what the app raises
    while handling it) on to the server: the answer was closed, which is no error.
    """

    reason = "stream_capped"


class LeaseLostError(X402MeterError):
    """Another worker holds the row: this one must not settle it."""

    reason = "lease_lost"


class TokenizerUnavailableError(X402MeterError, RuntimeError):
    """No usable vocabulary or BPE implementation: install ``x402-meter[tokenizer]``."""

    reason = "tokenizer_unavailable"


# -- the wire and the facilitator server ---------------------------------------------------------


class NotCanonicalUintError(X402MeterError, ValueError):
    """A value that is not the canonical decimal string of a uint256."""

    reason = "not_canonical_uint"


class MalformedRequestError(X402MeterError, ValueError):
    """A verify/settle body the facilitator refuses to interpret; ``reason`` is stable."""

    reason = "invalid_request"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # type: ignore[misc]  # instance value refines the class default
        self.message = message


# -- the local development stack ----------------------------------------------------------------


class DevStackError(X402MeterError):
    """The local stack (``x402-meter dev``, the test fixture) could not be built or started."""

    reason = "devstack_error"


class AnvilNotFoundError(DevStackError, FileNotFoundError):
    """No anvil binary could be found; the message is one line that says how to get one."""

    reason = "anvil_not_found"


class AnvilInstallError(DevStackError, RuntimeError):
    """``npm install`` of anvil failed or is not possible here (no npm)."""

    reason = "anvil_install_failed"


class PortInUseError(DevStackError, OSError):
    """A fixed port of the local stack is already taken (or two parts were given one port)."""

    reason = "port_in_use"


class StartupError(DevStackError, RuntimeError):
    """A child process exited or stayed silent before saying it was ready."""

    reason = "startup_failed"


class DeploymentError(DevStackError, RuntimeError):
    """A deployment transaction reverted."""

    reason = "deployment_failed"


class VyperNotInstalledError(DevStackError, RuntimeError):
    """The vyper compiler (a development dependency) is not installed."""

    reason = "vyper_not_installed"
