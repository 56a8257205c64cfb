"""A payer's cooperative refund of its channel: the unclaimed rest goes back to it at once,
and everything this server charged is claimed in the same transaction. A fresh object per
refund (its state is the refund's).

The refund holds the channel as a request does (one at a time: a refund while an answer is
being served is refused as busy), and its voucher must be for exactly what the channel has
been charged (else the spec's corrective 402, with the server's state and latest voucher).
The facilitator's ``/verify`` reads the channel on chain (balance, ``totalClaimed``, refund
nonce); the refund is then the facilitator's ``/settle`` of the SDK's enriched refund
payload: ``claimWithSignature`` of the charged cumulative and ``refundWithSignature`` of the
rest in one ``multicall``, signed by the seller's receiver authorizer where the channel names
it, else by the facilitator's. The outcome (claimed cumulative, the mirror after the refund,
the transaction) is written to the channel's record before the payer is answered.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.authorizer_signer import sign_claim_batch, sign_refund
from x402.mechanisms.evm.batch_settlement.errors import (
    ERR_CUMULATIVE_AMOUNT_MISMATCH,
    ERR_MISSING_CHANNEL,
    ERR_REFUND_AMOUNT_INVALID,
    ERR_REFUND_NO_BALANCE,
    ERR_VERIFICATION_STATE_UNAVAILABLE,
)
from x402.mechanisms.evm.batch_settlement.types import (
    AuthorizerSigner,
    EnrichedRefundPayload,
    VoucherClaim,
    VoucherFields,
)
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

from x402_meter.schemes.base import Refusal
from x402_meter.schemes.channel_admission import busy, free_record
from x402_meter.schemes.channel_payload import RefundRequest
from x402_meter.schemes.channel_state import ChainSnapshot, channel_state, checksummed_config
from x402_meter.store import ChannelRecord

if TYPE_CHECKING:
    from x402_meter.facilitator import FacilitatorClient
    from x402_meter.schemes.batch_settlement import BatchSettlementScheme

logger = logging.getLogger("x402_meter")

WRITE_ATTEMPTS: Final = 5


class ChannelRefund:
    """Refunds one channel's unclaimed rest to its payer, or says why not (``Refusal``)."""

    def __init__(
        self,
        scheme: BatchSettlementScheme,
        request: RefundRequest,
        payload: PaymentPayload,
        requirements: PaymentRequirements,
        *,
        key: str,
        until: float,
    ) -> None:
        self.scheme = scheme
        self.channels = scheme.channels
        self.request = request
        self.payment = request.payment
        self.payload = payload
        self.requirements = requirements
        self.key = key
        """This refund's hold on the channel."""
        self.until = until
        """When the hold ends if this process dies holding it."""
        self.held: ChannelRecord | None = None
        """The channel as this refund last wrote it, while it holds it."""

    async def run(self, facilitator: FacilitatorClient) -> Refusal | SettleResponse:
        """The refund's ``SettleResponse`` (what ``PAYMENT-RESPONSE`` carries; ``success``
        false when the facilitator could not refund), or why it was refused."""
        record = await self._free_record()
        if not isinstance(record, ChannelRecord):
            return record
        # Checked before anything else: the SDK client's cumulative is behind after a
        # streamed answer, and the corrective 402 costs no facilitator call.
        if self.payment.cumulative != max(record.charged, record.total_claimed):
            return self._corrective(record, ChainSnapshot.of(record))
        self.held = await self.channels.put(
            dataclasses.replace(record, serving=self.key, serving_until=self.until)
        )
        if self.held is None:
            return busy()
        try:
            return await self._refund(facilitator)
        finally:
            await self.release()

    async def _refund(self, facilitator: FacilitatorClient) -> Refusal | SettleResponse:
        verified = await facilitator.verify(self.payload, self.requirements)
        if not verified.is_valid:
            reason = verified.invalid_reason or "payment_invalid"
            return Refusal(reason, verified.invalid_message or reason)
        chain = ChainSnapshot.read(verified.extra)
        if chain is None:
            return Refusal(
                ERR_VERIFICATION_STATE_UNAVAILABLE,
                "the facilitator did not report the channel's balance and totalClaimed",
            )
        held = self.held
        assert held is not None
        charged = max(held.charged, chain.total_claimed)
        await self._update({"charged": charged, **chain.mirrored(time.time())})
        if self.payment.cumulative != charged:
            return self._corrective(held, chain)
        rest = chain.balance - charged
        if rest <= 0:
            return Refusal(
                ERR_REFUND_NO_BALANCE,
                f"nothing to refund: the channel holds {chain.balance}, all charged",
            )
        amount = rest if self.request.amount is None else self.request.amount
        if not 0 < amount <= rest:
            return Refusal(
                ERR_REFUND_AMOUNT_INVALID,
                f"a refund of {amount} asked: it must be above 0 and at most the {rest}"
                " not charged",
            )
        claims = self._claims(charged) if charged > chain.total_claimed else []
        enriched = await self._enriched(amount, chain.refund_nonce, claims)
        settled = await facilitator.settle(enriched, self.requirements)
        if not settled.success:
            logger.warning(
                "refund of channel %s refused: %s %s",
                self.payment.channel_id,
                settled.error_reason,
                settled.error_message or "",
            )
            return settled
        return await self._landed(settled, chain, charged, amount, claimed=bool(claims))

    # -- the steps ---------------------------------------------------------------------

    async def _free_record(self) -> ChannelRecord | Refusal:
        """The channel's record if no request holds it (as a payment takes it)."""
        record = await free_record(self.scheme, self.payment.channel_id)
        if record is None:
            return Refusal(
                ERR_MISSING_CHANNEL,
                "this server has no record of the channel: it refunds only channels it serves",
            )
        return record

    def _corrective(self, record: ChannelRecord, mirror: ChainSnapshot) -> Refusal:
        """The spec's corrective 402: the charged cumulative the refund voucher must be
        for, and the server's latest voucher (which the client checks before it believes
        the cumulative)."""
        charged = max(record.charged, mirror.total_claimed)
        extra: dict[str, Any] = {
            "channelState": channel_state(self.payment.channel_id, mirror, charged)
        }
        if record.voucher_signature and record.voucher_max >= charged:
            extra["voucherState"] = {
                "signedMaxClaimable": str(record.voucher_max),
                "signature": record.voucher_signature,
            }
        return Refusal(
            ERR_CUMULATIVE_AMOUNT_MISMATCH,
            f"a refund's voucher must be for {charged}: what the channel has been charged",
            extra=extra,
        )

    def _claims(self, charged: int) -> list[VoucherClaim]:
        """The claim of everything charged, with the refund's own voucher (checked: it is
        the payer's, for exactly the charged cumulative)."""
        return [
            VoucherClaim(
                channel=checksummed_config(self.payment.config),
                max_claimable_amount=str(self.payment.cumulative),
                signature=self.payment.signature,
                total_claimed=str(charged),
            )
        ]

    async def _enriched(
        self, amount: int, nonce: int, claims: list[VoucherClaim]
    ) -> PaymentPayload:
        """The SDK's server-to-facilitator refund: amount and nonce resolved, the claim
        added, signed by the seller's receiver authorizer if the channel names it."""
        network = str(self.requirements.network)
        payment = self.payment
        refund = EnrichedRefundPayload(
            channel_config=checksummed_config(payment.config),
            voucher=VoucherFields(
                channel_id=payment.channel_id,
                max_claimable_amount=str(payment.cumulative),
                signature=payment.signature,
            ),
            amount=str(amount),
            refund_nonce=str(nonce),
            claims=claims,
        )
        authorizer = self.scheme.authorizer
        if (
            authorizer is not None
            and authorizer.address.lower() == payment.config.receiver_authorizer.lower()
        ):
            (
                refund.refund_authorizer_signature,
                refund.claim_authorizer_signature,
            ) = await anyio.to_thread.run_sync(_sign, authorizer, refund, network)
        return PaymentPayload(
            x402_version=2,
            accepted=self.requirements,
            payload=refund.to_dict(),
            resource=self.payload.resource,
        )

    async def _landed(
        self,
        settled: SettleResponse,
        before: ChainSnapshot,
        charged: int,
        amount: int,
        *,
        claimed: bool,
    ) -> SettleResponse:
        """Record the refund in the channel (before the payer hears of it), have the claim
        swept to ``payTo``, and say what the payer gets."""
        refunded = _uint(settled.amount, amount)
        state = (settled.extra or {}).get("channelState")
        after = ChainSnapshot.read(state if isinstance(state, dict) else None)
        if after is None:  # what the contract does: the claim, then the refund
            after = ChainSnapshot(
                balance=before.balance - refunded,
                total_claimed=max(before.total_claimed, charged),
                withdraw_requested_at=before.withdraw_requested_at,
                refund_nonce=before.refund_nonce + 1,
            )
        transaction = settled.transaction

        def landed(current: ChannelRecord) -> dict[str, Any]:
            changes: dict[str, Any] = {
                **after.mirrored(time.time()),
                "claimed": max(current.claimed, charged),
                "refunded": current.refunded + refunded,
                "refund_transaction": transaction,
                "serving": None,
                "serving_until": 0.0,
            }
            if claimed:
                changes.update(claim_transaction=transaction, claim_failures=0, claim_error=None)
            return changes

        stored = await self._write(landed)
        logger.info(
            "refunded %s of channel %s (%s charged, claimed in the same transaction): %s",
            refunded,
            self.payment.channel_id,
            charged,
            transaction,
        )
        metrics = self.scheme.metrics
        if metrics is not None:
            asset = Web3.to_checksum_address(self.requirements.asset)
            metrics.session_refund(str(self.requirements.network), asset, refunded)
        if claimed and stored is not None:
            self.scheme.on_refunded(stored)
        return SettleResponse(
            success=True,
            transaction=transaction,
            network=settled.network,
            payer=settled.payer or self.payment.payer,
            amount=str(refunded),
            extra={"channelState": channel_state(self.payment.channel_id, after, charged)},
        )

    async def _update(self, changes: dict[str, Any]) -> None:
        await self._write(lambda _: changes)

    async def _write(
        self, change: Callable[[ChannelRecord], dict[str, Any]]
    ) -> ChannelRecord | None:
        """Apply ``change`` to the channel while this refund holds it (the claims worker
        may write its claim fields meanwhile: read again and apply again)."""
        current = self.held
        for _ in range(WRITE_ATTEMPTS):
            if current is None or current.serving != self.key:
                return None
            stored = await self.channels.put(dataclasses.replace(current, **change(current)))
            if stored is not None:
                self.held = stored if stored.serving == self.key else None
                return stored
            current = await self.channels.get(self.payment.channel_id)
        logger.warning("channel %s kept changing during its refund", self.payment.channel_id)
        return None

    async def release(self) -> None:
        """Give the channel up, if this refund still holds it."""
        with anyio.CancelScope(shield=True):
            if self.held is not None:
                await self._update({"serving": None, "serving_until": 0.0})
                self.held = None


def _sign(
    authorizer: AuthorizerSigner, refund: EnrichedRefundPayload, network: str
) -> tuple[str, str | None]:
    """The receiver authorizer's ``Refund`` signature, and its ``ClaimBatch`` one (if the
    refund claims)."""
    assert refund.voucher is not None
    refund_signature = sign_refund(
        authorizer, refund.voucher.channel_id, refund.amount, refund.refund_nonce, network
    )
    claim_signature = (
        sign_claim_batch(authorizer, refund.claims, network) if refund.claims else None
    )
    return refund_signature, claim_signature


def _uint(value: str | None, default: int) -> int:
    return int(value) if value and value.isdigit() else default


__all__ = ["ChannelRefund"]
