"""The store interface: atomic reservations of authorizations, and the payment ledger.

A reservation makes an authorization single-use across every process that shares the
store, from the moment it is first seen until it expires on chain. The ledger holds one
row per verified payment, from ``verified`` to a final state, with everything a settlement
worker in any process needs to finish the job: the payload, the server's requirements, the
running count, and a lease that says who is working on the row right now. Payers that voided
an authorization they were served on are kept for a while, so every worker refuses them.
"""

from __future__ import annotations

import operator
from collections.abc import Collection
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Final, Protocol


class LedgerState(StrEnum):
    VERIFIED = "verified"
    """Verified by the facilitator; the response is being served and metered."""
    TO_SETTLE = "to_settle"
    """The body closed (or its server died); the charge is known and waits for settlement."""
    SETTLED = "settled"
    FAILED = "failed"
    """The facilitator refused the settlement for good; ``error`` keeps its reason."""
    NOT_CHARGED = "not_charged"
    """Nothing to charge (an error response, or no tokens): no settlement was sent."""

    @property
    def receipt_status(self) -> str:
        """The state as receipts show it: the two in-flight states are ``pending``."""
        return "pending" if self in OPEN_STATES else self.value

    @property
    def is_final(self) -> bool:
        return self not in OPEN_STATES


OPEN_STATES = frozenset({LedgerState.VERIFIED, LedgerState.TO_SETTLE})


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
    """The charge: the checkpointed running charge while ``verified``, final from ``to_settle``."""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    usage_source: str | None = None
    """``reported`` or ``estimated`` per side, e.g. ``input=reported,output=estimated``."""
    transaction: str | None = None
    error: str | None = None
    attempts: int = 0
    next_attempt_at: float = 0.0
    lease_owner: str | None = None
    lease_until: float = 0.0
    """Until then only ``lease_owner`` works on the row (serves it, or settles it)."""

    def replace(self, **changes: Any) -> PaymentRecord:
        """The row with ``changes``: what ``dataclasses.replace`` makes, at two thirds of its
        cost (it walks the fields in Python; a row is rewritten several times per paid
        request). An unknown field raises ``TypeError``, as there."""
        values = list(_RECORD_VALUES(self))
        for name, value in changes.items():
            try:
                values[_RECORD_INDEX[name]] = value
            except KeyError:
                raise TypeError(f"PaymentRecord has no field {name!r}") from None
        return PaymentRecord(*values)


_RECORD_FIELDS: Final = tuple(f.name for f in fields(PaymentRecord))
_RECORD_INDEX: Final = {name: index for index, name in enumerate(_RECORD_FIELDS)}
_RECORD_VALUES: Final = operator.attrgetter(*_RECORD_FIELDS)


@dataclass(frozen=True, slots=True)
class VoidedPayer:
    """A payer that voided an authorization it was being served on: refused until ``until``.

    Voiding (a Permit2 nonce invalidated, the funds moved, the approval revoked) between
    verification and settlement gets an answer for nothing; refusing the payer for a while
    makes that a one-off, not a business model.
    """

    payer: str
    """The payer's address, lower case."""
    until: float
    """Unix time until which the payer is refused."""
    reason: str
    """The facilitator's reason, e.g. ``permit2_insufficient_balance``."""
    voided_at: float
    receipt_id: str | None = None
    """The payment it voided."""


class PaymentStore(Protocol):
    """What the middleware, the settlement worker and the ledger CLI need from a store."""

    async def reserve(self, key: str, expires_at: float) -> bool:
        """Atomically claim ``key`` until ``expires_at`` (unix time); False if already claimed."""
        ...

    async def release(self, key: str) -> None:
        """Give up a reservation, for a payment that was never verified (it was not used)."""
        ...

    async def save(self, record: PaymentRecord) -> None:
        """Insert or replace the ledger row ``record.receipt_id``."""
        ...

    async def get(self, receipt_id: str) -> PaymentRecord | None: ...

    async def claim(
        self, receipt_id: str, owner: str, until: float, now: float
    ) -> PaymentRecord | None:
        """Atomically lease an open row to ``owner`` if its lease expired (or is ``owner``'s).

        Returns the row with the new lease, or None if someone else holds it or it is final.
        """
        ...

    async def due(self, now: float, limit: int = 100) -> list[PaymentRecord]:
        """Open rows nobody holds whose next attempt is due: work for a settlement worker."""
        ...

    async def void_payer(self, entry: VoidedPayer) -> None:
        """Refuse ``entry.payer`` until ``entry.until`` (replacing an earlier entry for it)."""
        ...

    async def voided_payer(self, payer: str, now: float) -> VoidedPayer | None:
        """The entry refusing ``payer`` (any case) at ``now``, or None."""
        ...

    async def voided_payers(self, now: float, limit: int = 100) -> list[VoidedPayer]:
        """Payers refused at ``now``, the most recently voided first."""
        ...

    async def clear_voided_payer(self, payer: str) -> bool:
        """Stop refusing ``payer`` (any case); False if it was not refused."""
        ...

    async def list(
        self, states: Collection[LedgerState] | None = None, limit: int = 100, offset: int = 0
    ) -> list[PaymentRecord]:
        """Rows, newest first, optionally only in ``states``."""
        ...

    async def aclose(self) -> None: ...
