"""The wallet's record of its payments, and what counts against ``max_total``.

The transports and the wallet's SDK hooks use only these public methods: reserve before
signing (refused above ``max_total``), release what was never signed, record what was signed,
answered and received, and read from the chain what the unproven payments actually cost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

import httpx
from x402.http.utils import decode_payment_response_header
from x402.schemas import PaymentRequirements
from x402.schemas.v1 import PaymentRequirementsV1

from x402_meter.assets import Asset
from x402_meter.client._exceptions import SpendCapExceededError
from x402_meter.client._receipts import (
    RECEIPT_HEADER,
    SESSION_SCHEME,
    Payment,
    Receipt,
    seller_amount,
)
from x402_meter.client.chain_proof import ChainProver, Permit2Authorization
from x402_meter.errors import ConfigurationError

RequirementsView: TypeAlias = PaymentRequirements | PaymentRequirementsV1

_LOG: Final = logging.getLogger("x402_meter.client")


class PaymentLedger:
    """Every payment one wallet reserved or signed, oldest first. Thread-safe.

    Args:
        payer: the wallet's address (the ``payer`` of each payment).
        asset: the only token it pays with.
        max_total: the cap on all payments together, atomic units; None: no cap.
        prover: reads settlements from the payer's own RPC endpoint; None: every payment
            counts at its maximum for good.
    """

    def __init__(
        self, *, payer: str, asset: Asset, max_total: int | None, prover: ChainProver | None
    ) -> None:
        self.payer = payer
        self.asset = asset
        self.max_total = max_total
        self.prover = prover
        self._lock = threading.Lock()
        self._payments: list[Payment] = []
        self._refunded: dict[str, int] = {}
        """What refunds gave back, by channel, as counted back from ``spent``."""

    @property
    def payments(self) -> tuple[Payment, ...]:
        """Every payment reserved or signed so far, oldest first."""
        with self._lock:
            return tuple(self._payments)

    @property
    def spent(self) -> int:
        """Atomic units counted against ``max_total`` (see ``Payment.spend``), less what
        session refunds gave back."""
        with self._lock:
            return self._spent()

    @property
    def refunded(self) -> int:
        """Atomic units session refunds gave back (and ``spent`` counts back)."""
        with self._lock:
            return sum(self._refunded.values())

    def _spent(self) -> int:
        return sum(payment.spend for payment in self._payments) - sum(self._refunded.values())

    def record_refund(self, channel_id: str, amount: int) -> int:
        """A refund gave ``amount`` back from ``channel_id``: count it back from ``spent``,
        but never more than this ledger counted deposits into that channel (a channel
        resumed from the book was paid for by an earlier process: its refund is money back,
        not room under this wallet's ``max_total``). Returns what was counted back."""
        channel_id = channel_id.lower()
        with self._lock:
            deposited = sum(
                p.spend
                for p in self._payments
                if p.scheme == SESSION_SCHEME and (p.channel_id or "").lower() == channel_id
            )
            earlier = self._refunded.get(channel_id, 0)
            counted = max(min(amount, deposited - earlier), 0)
            if counted:
                self._refunded[channel_id] = earlier + counted
        return counted

    # -- before signing ---------------------------------------------------------------------------

    def reserve(
        self,
        offer: RequirementsView,
        *,
        method: str,
        url: str,
        channel_id: str | None = None,
        deposit: int | None = None,
    ) -> Payment:
        """Record a payment of ``offer``'s amount, or raise ``SpendCapExceededError`` if
        ``max_total`` does not allow it (nothing recorded then). A session payment
        (``channel_id``) counts only its ``deposit``: its voucher is paid from the channel."""
        amount = int(offer.get_amount())
        session = offer.scheme == SESSION_SCHEME
        counted = (deposit or 0) if session else amount
        with self._lock:
            spent = self._spent()
            if self.max_total is not None and spent + counted > self.max_total:
                raise SpendCapExceededError(
                    "max_total",
                    requested=counted,
                    limit=self.max_total,
                    left=max(self.max_total - spent, 0),
                    decimals=self.asset.decimals,
                )
            payment = Payment(
                method=method,
                url=url,
                scheme=offer.scheme,
                network=offer.network,
                asset=offer.asset,
                pay_to=offer.pay_to,
                payer=self.payer,
                max_amount=amount,
                channel_id=channel_id if session else None,
                deposit=deposit if session else None,
            )
            self._payments.append(payment)
        return payment

    def release(self, payment: Payment) -> None:
        """Nothing was signed for ``payment``: give its reservation back (a signed one stays,
        its authorization being usable until its deadline)."""
        if payment.signed:
            return
        with self._lock:
            if payment in self._payments:
                self._payments.remove(payment)

    # -- after signing ----------------------------------------------------------------------------

    def record_signed(self, payment: Payment, payload: Mapping[str, Any]) -> None:
        """``payment`` is signed with ``payload``; an ``upto`` one remembers its authorization
        when it is this wallet's own Permit2 one in its asset (else nothing the chain shows
        can lower what it counts)."""
        if payment.scheme == "upto":
            payment.authorization = self._own_authorization(payload)
        elif payment.scheme == SESSION_SCHEME:
            voucher = payload.get("voucher")
            if isinstance(voucher, Mapping):
                payment.cumulative = seller_amount(voucher.get("maxClaimableAmount"))
            deposit = payload.get("deposit")
            if isinstance(deposit, Mapping):  # what was signed counts, if ever more
                signed = seller_amount(deposit.get("amount")) or 0
                payment.deposit = max(payment.deposit or 0, signed) or None
        payment.signed = True

    def record_answer(self, payment: Payment, url: httpx.URL, response: httpx.Response) -> None:
        """The server answered the paid request to ``url``: its status, where its receipt is,
        and the settlement transaction its ``PAYMENT-RESPONSE`` header claims."""
        payment.status_code = response.status_code
        path = response.headers.get(RECEIPT_HEADER)
        if path:
            payment.receipt_url = str(url.join(path))
        settled = response.headers.get("payment-response") or response.headers.get(
            "x-payment-response"
        )
        if settled:
            with contextlib.suppress(ValueError):
                payment.transaction = decode_payment_response_header(settled).transaction or None

    def record_receipt(self, payment: Payment, receipt: Receipt) -> None:
        """The seller's receipt: its transaction is a claim for the chain to check; its
        ``amount`` never lowers what the payment counts."""
        payment.receipt = receipt
        if receipt.transaction:
            payment.transaction = receipt.transaction

    # -- what the chain proves --------------------------------------------------------------------

    def unproven(self) -> list[Payment]:
        """Signed ``upto`` payments that the chain may yet prove cheaper than their maximum
        (none without a prover: then nothing can lower what they count)."""
        if self.prover is None:
            return []
        with self._lock:
            return [
                p
                for p in self._payments
                if p.signed and p.authorization is not None and p.proven_amount is None
            ]

    def needs_receipt(self, payment: Payment) -> bool:
        """The seller has not named a settlement yet: its receipt may."""
        final = payment.receipt is not None and payment.receipt.is_final
        return payment.transaction is None and payment.receipt_url is not None and not final

    def prove(self, payment: Payment) -> None:
        """Read the payment's settlement from the chain (blocking): its claimed transaction
        if that proves it, else whether its authorization expired unused. Unreadable or
        unproven, it keeps counting at its maximum."""
        prover, authorization = self.prover, payment.authorization
        if prover is None or authorization is None or payment.proven_amount is not None:
            return
        try:
            if payment.transaction is not None:
                amount = prover.settled_amount(authorization, payment.transaction)
                if amount is not None:
                    payment.proof = payment.transaction
                    payment.proven_amount = amount
                    return
            if prover.expired_unused(authorization):  # the chain's clock, not this machine's
                payment.proven_amount = 0
        except ConfigurationError:
            raise
        except Exception as error:  # any failure to read leaves it unproven: fail closed
            _LOG.warning(
                "could not read the settlement for %s from the chain: %s", payment.url, error
            )

    def _own_authorization(self, payload: Mapping[str, Any]) -> Permit2Authorization | None:
        authorization = Permit2Authorization.from_payload(payload)
        if authorization is None or authorization.owner.lower() != self.payer.lower():
            return None
        if authorization.token.lower() != self.asset.address.lower():
            return None
        return authorization
