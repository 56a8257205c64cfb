"""Payers that void their authorizations: how to recognise them, remember them, refuse them.

An ``upto`` or ``exact`` authorization is a promise until it is settled. Between the
verification and the settlement the payer can invalidate its Permit2 nonce, move its funds or
revoke its Permit2 approval, and the settlement then fails. The facilitator names what it
found; these reasons are the ones a payer causes. Such a payer is refused (402
``payer_voided``) for a while, in every worker that shares the store, and the ledger CLI
lists and clears the entries.
"""

from __future__ import annotations

import time
from typing import Final

from x402_meter.errors import PaymentError
from x402_meter.store import PaymentStore, VoidedPayer

PAYER_VOIDED: Final = "payer_voided"
"""The reason of the 402 that refuses a payer that voided an authorization."""

VOIDING_REASONS: Final = frozenset(
    {
        # upto (Permit2): the funds moved, the approval revoked, the nonce used up (the
        # settle simulation reverts with balance and allowance fine: InvalidNonce).
        "permit2_insufficient_balance",
        "permit2_allowance_required",
        "permit2_invalid_nonce",
        "invalid_upto_evm_transaction_failed",
        # exact (EIP-3009): the funds moved, the authorization cancelled or used.
        "invalid_exact_evm_insufficient_balance",
        "invalid_exact_evm_nonce_already_used",
        "invalid_exact_evm_transaction_simulation_failed",
    }
)
"""Facilitator reasons (``invalidReason``, ``errorReason``) that mean the payer made an
authorization that had verified unsettleable. Reasons that are the server's or the
facilitator's doing (a deadline passed, a facilitator address rotated) are not here."""


def is_voiding(reason: str | None) -> bool:
    return reason in VOIDING_REASONS


async def remember_voided_payer(
    store: PaymentStore, payer: str, *, seconds: float, reason: str, receipt_id: str | None
) -> None:
    """Refuse ``payer`` for ``seconds`` from now (nothing when ``seconds`` is 0)."""
    if seconds <= 0:
        return
    now = time.time()
    await store.void_payer(VoidedPayer(payer.lower(), now + seconds, reason, now, receipt_id))


async def refuse_voided_payer(store: PaymentStore, payer: str, seconds: float) -> None:
    """Raise ``PaymentError`` (402 ``payer_voided``) if ``payer`` is refused right now."""
    if seconds <= 0:
        return  # the feature is off: no store read on the request path
    entry = await store.voided_payer(payer, time.time())
    if entry is not None:
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.until))
        raise PaymentError(
            PAYER_VOIDED,
            f"this payer voided an earlier payment ({entry.reason}); refused until {until}",
        )
