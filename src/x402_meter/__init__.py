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

from x402_meter.assets import Asset
from x402_meter.errors import (
    ConfigurationError,
    FacilitatorUnavailableError,
    PaymentAlreadyUsedError,
    PaymentError,
    RequestRefusedError,
    X402MeterError,
)
from x402_meter.facilitator import FacilitatorClient
from x402_meter.metering import Meter, MeterFactory, ResponseInfo, Usage
from x402_meter.middleware import X402Meter
from x402_meter.pricing import PricedRequest, PriceTable, TokenPrice
from x402_meter.routing import metered
from x402_meter.store import MemoryStore, PaymentRecord, PaymentStore

try:
    __version__ = version("x402-meter")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Asset",
    "ConfigurationError",
    "FacilitatorClient",
    "FacilitatorUnavailableError",
    "MemoryStore",
    "Meter",
    "MeterFactory",
    "PaymentAlreadyUsedError",
    "PaymentError",
    "PaymentRecord",
    "PaymentStore",
    "PriceTable",
    "PricedRequest",
    "RequestRefusedError",
    "ResponseInfo",
    "TokenPrice",
    "Usage",
    "X402Meter",
    "X402MeterError",
    "__version__",
    "metered",
]
