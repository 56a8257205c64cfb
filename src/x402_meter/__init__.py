"""x402-meter: charge per token for anything served over HTTP, with x402.

from x402_meter import X402Meter

app.add_middleware(
    X402Meter,
    pay_to="0xYourAddress",
    network="eip155:8453",
    price_per_token="0.000002",
    max_tokens=4096,
    routes=["POST /v1/chat/completions"],
)
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from x402_meter.assets import Asset
from x402_meter.config import CapPolicy, FacilitatorHeaders, MeterOptions
from x402_meter.errors import (
    ConfigurationError,
    FacilitatorUnavailableError,
    PaymentAlreadyUsedError,
    PaymentError,
    RequestRefusedError,
    StreamCapped,
    TokenizerUnavailableError,
    X402MeterError,
)
from x402_meter.facilitator import FacilitatorClient
from x402_meter.metering import Meter, MeterFactory, ResponseInfo, Usage
from x402_meter.metrics import MeterMetrics, PrometheusMetrics
from x402_meter.middleware import X402Meter
from x402_meter.pricing import (
    PricedRequest,
    PriceFunction,
    PriceInput,
    PriceModel,
    PriceTable,
    TokenPrice,
)
from x402_meter.protocol.offer import Scheme
from x402_meter.routing import metered
from x402_meter.settlement import RetryPolicy, SettlementHook
from x402_meter.store import MemoryStore, PaymentRecord, PaymentStore

try:
    __version__ = version("x402-meter")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Asset",
    "CapPolicy",
    "ConfigurationError",
    "FacilitatorClient",
    "FacilitatorHeaders",
    "FacilitatorUnavailableError",
    "MemoryStore",
    "Meter",
    "MeterFactory",
    "MeterMetrics",
    "MeterOptions",
    "NoPayableOfferError",
    "PayerError",
    "PaymentAlreadyUsedError",
    "PaymentError",
    "PaymentRecord",
    "PaymentStore",
    "PriceFunction",
    "PriceInput",
    "PriceModel",
    "PriceTable",
    "PricedRequest",
    "PrometheusMetrics",
    "ReceiptUnavailableError",
    "RequestRefusedError",
    "ResponseInfo",
    "RetryPolicy",
    "Scheme",
    "SessionReceiptError",
    "SessionRefundError",
    "SettlementHook",
    "SpendCapExceededError",
    "StreamCapped",
    "TokenPrice",
    "TokenizerUnavailableError",
    "Usage",
    "X402Meter",
    "X402MeterError",
    "__version__",
    "metered",
]

_CLIENT_ERRORS = frozenset(
    {
        "NoPayableOfferError",
        "PayerError",
        "ReceiptUnavailableError",
        "SessionReceiptError",
        "SessionRefundError",
        "SpendCapExceededError",
    }
)
"""The paying client's errors: imported on first use, so that a server that never pays does
not import ``openai`` (their base where it is installed) with ``x402_meter``."""

if TYPE_CHECKING:
    from x402_meter.client._exceptions import (
        NoPayableOfferError,
        PayerError,
        ReceiptUnavailableError,
        SessionReceiptError,
        SessionRefundError,
        SpendCapExceededError,
    )


def __getattr__(name: str) -> Any:
    if name in _CLIENT_ERRORS:
        from x402_meter.client import _exceptions

        return getattr(_exceptions, name)
    raise AttributeError(f"module 'x402_meter' has no attribute {name!r}")
