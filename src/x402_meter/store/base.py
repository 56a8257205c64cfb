"""The store interface: atomic reservations of authorizations, and the payment ledger.

A reservation makes an authorization single-use across every request that shares the
store, from the moment it is first seen until it expires on chain. The ledger holds one
row per verified payment, from ``verified`` to a final state, with what the settlement
worker needs to finish the job (the payload and the server's requirements).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class LedgerState(StrEnum):
    VERIFIED = "verified"
    """Verified by the facilitator; the response is being served and metered."""
    TO_SETTLE = "to_settle"
    """The body closed; the charge is known and waits for the settlement worker."""
    SETTLED = "settled"
    FAILED = "failed"
    NOT_CHARGED = "not_charged"
    """Nothing to charge (an error response, or no tokens): no settlement was sent."""

    @property
    def receipt_status(self) -> str:
        """The state as receipts show it: the two in-flight states are ``pending``."""
        return "pending" if self in (LedgerState.VERIFIED, LedgerState.TO_SETTLE) else self.value

    @property
    def is_final(self) -> bool:
        return self in (LedgerState.SETTLED, LedgerState.FAILED, LedgerState.NOT_CHARGED)


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    """One row of the ledger. Amounts are integers in the asset's atomic units."""

    receipt_id: str
    key: str
    state: LedgerState
    scheme: str
    network: str
    asset: str
    payer: str
    pay_to: str
    max_amount: int
    x402_version: int
    payload_json: str
    requirements_json: str
    created_at: float
    updated_at: float
    amount: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    usage_source: str | None = None
    transaction: str | None = None
    error: str | None = None
    attempts: int = 0


class PaymentStore(Protocol):
    """What the middleware and the settlement worker need from a store."""

    async def reserve(self, key: str, expires_at: float) -> bool:
        """Atomically claim ``key`` until ``expires_at`` (unix time); False if already claimed."""
        ...

    async def release(self, key: str) -> None:
        """Give up a claim, for a payment that was never verified (it was not used)."""
        ...

    async def save(self, record: PaymentRecord) -> None:
        """Insert or replace the ledger row ``record.receipt_id``."""
        ...

    async def get(self, receipt_id: str) -> PaymentRecord | None: ...

    async def aclose(self) -> None: ...
