"""What every benchmark shares: summaries of samples, the machine, the payer's signature and
the ``upto`` terms it signs on the local stack.

The machines these run on are small and shared: compare figures taken side by side in one
run (ratios of medians), and read min–max as the noise, not as a property of the code.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from eth_account import Account
from x402 import x402Client
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.http.utils import decode_payment_required_header, encode_payment_signature_header
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

if TYPE_CHECKING:
    from x402_meter.devstack import LocalStack


@dataclass(frozen=True, slots=True)
class Summary:
    """Median, min and max of a set of samples (in whatever unit they were taken)."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise ValueError("no samples")
        ordered = sorted(samples)
        return cls(statistics.median(ordered), ordered[0], ordered[-1], len(ordered))

    def scaled(self, factor: float) -> Summary:
        return Summary(self.median * factor, self.low * factor, self.high * factor, self.n)

    def cell(self, digits: int = 1) -> str:
        """``median (min–max)`` for a table cell."""
        return f"{self.median:,.{digits}f} ({self.low:,.{digits}f}–{self.high:,.{digits}f})"


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of ``samples``."""
    ordered = sorted(samples)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
    return ordered[index]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cores() -> int:
    """What ``nproc`` prints: the CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine() -> str:
    """One line naming the machine and the interpreter."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"nproc {cores()}, {cpu_model()}, {platform.system()} {platform.release()}, "
        f"Python {sys.version.split()[0]}, load average at start {load}"
    )


class Payer:
    """Signs fresh x402 ``upto`` payments with the SDK client, as a real payer does."""

    def __init__(self, network: str, asset: str, private_key: str) -> None:
        self._client = x402Client().register(
            network, UptoEvmClientScheme(Account.from_key(private_key))
        )
        self._client.set_spend_controls({"allowed_assets": [{"network": network, "asset": asset}]})

    async def payloads(self, required: PaymentRequired, count: int) -> list[PaymentPayload]:
        """``count`` signed payloads for the challenge ``required``."""
        payloads = []
        for _ in range(count):
            payload = await self._client.create_payment_payload(required)
            assert isinstance(payload, PaymentPayload)
            payloads.append(payload)
        return payloads

    async def headers(self, required: PaymentRequired, count: int) -> list[str]:
        """``count`` ``PAYMENT-SIGNATURE`` values for the challenge ``required``."""
        return [encode_payment_signature_header(p) for p in await self.payloads(required, count)]

    async def headers_for_challenge(self, payment_required_header: str, count: int) -> list[str]:
        """As :meth:`headers`, for the ``PAYMENT-REQUIRED`` header of a 402."""
        decoded = decode_payment_required_header(payment_required_header)
        assert isinstance(decoded, PaymentRequired), "expected an x402 v2 challenge"
        return await self.headers(decoded, count)


def stack_facilitator(stack: LocalStack) -> HTTPFacilitatorClient:
    """The SDK's client for the local stack's facilitator, with the stack's API key."""
    from x402_meter.facilitator import bearer_auth_provider

    auth = bearer_auth_provider(stack.facilitator_api_key)
    return HTTPFacilitatorClient(FacilitatorConfig(url=stack.facilitator_url, auth_provider=auth))


def upto_requirements(
    stack: LocalStack,
    facilitator: HTTPFacilitatorClient,
    *,
    max_timeout_seconds: int,
    amount: str = "10000",
) -> PaymentRequirements:
    """``upto`` terms on the local stack that ``facilitator`` accepts: its ``/supported``
    ``extra`` (the facilitator address a signature must name) plus the token's EIP-712
    domain."""
    kinds = facilitator.get_supported().kinds
    extra = next(kind.extra for kind in kinds if kind.scheme == "upto") or {}
    return PaymentRequirements(
        scheme="upto",
        network=stack.network,
        asset=stack.asset,
        amount=amount,
        pay_to=stack.pay_to,
        max_timeout_seconds=max_timeout_seconds,
        extra={"name": stack.asset_name, "version": stack.asset_version, **extra},
    )
