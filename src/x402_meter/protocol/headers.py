"""x402 HTTP headers: strict, bounded decoding of payments; encoding with the SDK's models.

The SDK's own decoder is lenient (it skips base64 validation and guesses the version); a
server facing the internet should not be. Every way a header can be wrong has its own
``reason`` so a client can tell what to fix.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Final

from pydantic import ValidationError
from x402.http.utils import encode_payment_required_header, encode_payment_response_header
from x402.schemas import PaymentPayload, PaymentRequired, SettleResponse
from x402.schemas.v1 import PaymentPayloadV1

from x402_meter.errors import PaymentError

PAYMENT_SIGNATURE: Final = "payment-signature"
"""v2 request header carrying the payment."""
X_PAYMENT: Final = "x-payment"
"""v1 request header carrying the payment (also accepted with a v2 payload)."""
PAYMENT_REQUIRED: Final = "payment-required"
PAYMENT_RESPONSE: Final = "payment-response"
X_PAYMENT_RESPONSE: Final = "x-payment-response"

DEFAULT_MAX_HEADER_BYTES: Final = 8 * 1024
"""A signed payload is about 1.5 KB encoded; 8 KB leaves room for extensions."""


def _malformed(reason: str, message: str) -> PaymentError:
    return PaymentError(reason, message, status_code=400)


def decode_payment(
    value: bytes, *, max_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> PaymentPayload | PaymentPayloadV1:
    """Decode a ``PAYMENT-SIGNATURE``/``X-PAYMENT`` value, or raise a 400 PaymentError."""
    if len(value) > max_bytes:
        raise _malformed("payment_header_too_large", f"payment header exceeds {max_bytes} bytes")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(
            "invalid_base64", "payment header is not standard base64 (with padding)"
        ) from None
    try:
        # Decoded here, not by json.loads, which would also take UTF-16 and UTF-32.
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: deep nesting
        raise _malformed("invalid_json", "payment header does not decode to UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise _malformed("invalid_json", "payment header must decode to a JSON object")
    version = data.get("x402Version")
    if type(version) is not int or version not in (1, 2):
        raise _malformed("unsupported_x402_version", f"x402Version must be 1 or 2, got {version!r}")
    try:
        if version == 1:
            return PaymentPayloadV1.model_validate(data)
        return PaymentPayload.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "payload"
        raise _malformed("invalid_payload", f"{where}: {first['msg']}") from None


def payment_required_header(payment_required: PaymentRequired) -> bytes:
    return encode_payment_required_header(payment_required).encode("ascii")


def settle_response_header(result: SettleResponse) -> bytes:
    return encode_payment_response_header(result).encode("ascii")
