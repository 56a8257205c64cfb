"""The middleware's own HTTP answers: 402 challenges, refusals, 503s and receipts."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Send

from x402_meter.protocol.headers import PAYMENT_REQUIRED, payment_required_header
from x402_meter.protocol.offer import Offer
from x402_meter.store import PaymentRecord


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    content = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


async def send_payment_required(
    send: Send,
    offer: Offer,
    resource_url: str,
    *,
    reason: str,
    message: str,
    status: int = 402,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """402 (or 400) with the v2 ``PAYMENT-REQUIRED`` header and a v1-compatible JSON body.

    v2 clients read the header; v1 clients read ``accepts`` in the body, where amounts are
    ``maxAmountRequired`` and networks carry their legacy names. ``reason`` tells a program
    why; the body's ``error`` tells a person. The header's ``error`` is the reason, as the
    x402 SDK's server writes it: its clients act on it (a session's corrective 402).
    """
    header = payment_required_header(offer.payment_required(resource_url, reason))
    body = {
        "x402Version": 1,
        "error": message,
        "reason": reason,
        "accepts": [
            requirement.model_dump(by_alias=True, exclude_none=True, mode="json")
            for requirement in offer.v1_requirements(resource_url)
        ],
    }
    await send_json(send, status, body, [(PAYMENT_REQUIRED.encode(), header), *(headers or [])])


async def send_unavailable(send: Send, retry_after: int, message: str) -> None:
    await send_json(
        send,
        503,
        {"reason": "facilitator_unavailable", "error": message},
        [(b"retry-after", str(retry_after).encode())],
    )


def _sources(usage_source: str | None) -> dict[str, str | None]:
    """``input=reported,output=estimated`` -> per side, and overall (reported only if both)."""
    sides = dict(part.split("=", 1) for part in (usage_source or "").split(",") if "=" in part)
    known = [sides.get("input"), sides.get("output")]
    overall = None if None in known else ("reported" if known == ["reported"] * 2 else "estimated")
    return {
        "usage_source": overall,
        "input_source": sides.get("input"),
        "output_source": sides.get("output"),
    }


def in_units(atomic: int | None, decimals: int | None) -> str | None:
    """Atomic units as the asset's units, every decimal shown: 62 at 6 -> ``"0.000062"``."""
    if atomic is None or decimals is None:
        return None
    whole, fraction = divmod(atomic, 10**decimals)  # exact, however large the amount
    return f"{whole}.{fraction:0{decimals}d}" if decimals else str(whole)


def receipt_body(record: PaymentRecord, decimals: int | None = None) -> dict[str, Any]:
    """The receipt of ``record``; ``decimals``: its asset's, for the amounts in asset units
    (None when the asset is not the meter's own: those amounts are then null)."""
    return {
        "status": record.state.receipt_status,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cached_input_tokens": record.cached_input_tokens,
        **_sources(record.usage_source),
        "amount": str(record.amount) if record.amount is not None else None,
        "max_amount": str(record.max_amount),
        "amount_units": in_units(record.amount, decimals),
        "max_amount_units": in_units(record.max_amount, decimals),
        "asset": record.asset,
        "network": record.network,
        "scheme": record.scheme,
        "payer": record.payer,
        "pay_to": record.pay_to,
        "transaction": record.transaction,
        "error": record.error,
    }
