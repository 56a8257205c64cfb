"""The headers a browser must be allowed to send and to read for an x402 payment to work.

A page on another origin pays with request headers a browser only sends after a CORS
preflight allows them, and reads answer headers only when CORS exposes them. Pass these to
Starlette's ``CORSMiddleware``, added **after** ``X402Meter`` so that it is the outer layer:
it answers preflight ``OPTIONS`` itself (the meter and the app never see them) and its
headers are added to the meter's own 402s and receipts too::

    from starlette.middleware.cors import CORSMiddleware
    from x402_meter.cors import ALLOW_HEADERS, EXPOSE_HEADERS

    app.add_middleware(X402Meter, ...)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["https://chat.example.com"],
        allow_methods=["GET", "POST"],
        allow_headers=ALLOW_HEADERS,
        expose_headers=EXPOSE_HEADERS,
    )
"""

from __future__ import annotations

from typing import Final

ALLOW_HEADERS: Final[tuple[str, ...]] = (
    "payment-signature",
    "x-payment",
    "access-control-expose-headers",
)
"""Request headers a paying browser sends: the v2 and v1 payment headers, and
``Access-Control-Expose-Headers``, which the official TypeScript clients (``@x402/fetch``,
``@x402/axios``) set on their paid retry. ``Content-Type`` needs no listing."""

EXPOSE_HEADERS: Final[tuple[str, ...]] = (
    "PAYMENT-REQUIRED",
    "PAYMENT-RESPONSE",
    "X-PAYMENT-RESPONSE",
    "X-Payment-Receipt",
)
"""Answer headers a paying page must read: the 402's requirements (without it
``@x402/fetch`` falls back to the v1 body and cannot pay ``upto``), the settlement
response (v2 and v1), and where x402-meter serves the receipt."""
