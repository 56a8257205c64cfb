"""Receipts: where a paid answer's receipt is, and the endpoint that serves it."""

from __future__ import annotations

import re
import time
from typing import Final
from urllib.parse import parse_qs

from starlette.types import Scope, Send

from x402_meter.responses import receipt_body, send_json
from x402_meter.route_paths import below_root
from x402_meter.runtime import MeterRuntime

RECEIPT_ID: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")
MAX_RECEIPT_WAIT: Final = 30.0
RECEIPT_POLL: Final = 0.5


def route_path(scope: Scope) -> str:
    """The path below where this app is mounted (Starlette keeps the prefix in ``path``).

    Only receipts are looked up by it: whatever it says, the app is never called for them.
    """
    return below_root(scope["path"], scope.get("root_path", ""))


def receipt_path(scope: Scope, receipts_path: str, receipt_id: str) -> bytes:
    """The ``x-payment-receipt`` header of an answer: its receipt's path on this server."""
    return f"{scope.get('root_path', '')}{receipts_path}{receipt_id}".encode()


class ReceiptEndpoint:
    """``GET {receipts_path}{id}[?wait=seconds]``: the receipt, once final or after ``wait``."""

    def __init__(self, runtime: MeterRuntime) -> None:
        self.runtime = runtime
        self.receipts_path = runtime.config.receipts_path

    def serves(self, scope: Scope) -> bool:
        return scope["method"] in ("GET", "HEAD") and route_path(scope).startswith(
            self.receipts_path
        )

    async def __call__(self, scope: Scope, send: Send) -> None:
        receipt_id = route_path(scope)[len(self.receipts_path) :]
        store, settler = self.runtime.store, self.runtime.settler
        record = await store.get(receipt_id) if RECEIPT_ID.fullmatch(receipt_id) else None
        if record is None:
            await send_json(send, 404, {"reason": "receipt_not_found", "error": "no such receipt"})
            return
        deadline = time.monotonic() + wait_seconds(scope)
        while not record.state.is_final and (left := deadline - time.monotonic()) > 0:
            # Woken at once by a settlement in this process; another worker's outcome is
            # seen when the store is read again, twice a second.
            await settler.wait(receipt_id, min(left, RECEIPT_POLL))
            record = await store.get(receipt_id) or record
        asset = self.runtime.config.payment_asset
        decimals = asset.decimals if record.asset.lower() == asset.address.lower() else None
        body = receipt_body(record, decimals)
        scheme = self.runtime.schemes.get(record.scheme)
        if scheme is not None:
            body.update(scheme.receipt_extra(record))
        await send_json(send, 200, body)


def wait_seconds(scope: Scope) -> float:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("wait")
    try:
        return min(max(float(values[0]), 0.0), MAX_RECEIPT_WAIT) if values else 0.0
    except ValueError:
        return 0.0
