"""The ``batch-settlement`` client scheme the wallet registers with the SDK's x402 client.

The SDK's client knows one scheme object per scheme name; a wallet has many channels (one
per concurrent request to a server). This object stands for all of them: it signs with the
SDK scheme of the channel the request leased (found through its attempt), and routes each
paid answer's ``PAYMENT-RESPONSE`` to that channel's SDK hooks, which update its state.

A corrective 402 (the server's charged cumulative differs from ours: an answer whose charge
we could not read) is recovered from without the chain: the server's claim is believed only
when it shows a voucher this wallet signed for at least that cumulative.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from x402.http.utils import decode_payment_required_header
from x402.interfaces import PaymentPayloadContext
from x402.mechanisms.evm.batch_settlement.constants import VOUCHER_TYPES
from x402.mechanisms.evm.batch_settlement.errors import ERR_CUMULATIVE_AMOUNT_MISMATCH
from x402.mechanisms.evm.batch_settlement.utils import (
    coerce_bytes32,
    get_batch_settlement_eip712_domain,
)
from x402.mechanisms.evm.default_assets import find_default_asset
from x402.mechanisms.evm.utils import get_evm_chain_id
from x402.schemas import (
    PaymentRequired,
    PaymentRequirements,
    PaymentResponseContext,
    RecoveredResponseResult,
)

from x402_meter.client._attempt import current_attempt
from x402_meter.client._channel_leases import SessionChannels
from x402_meter.client._exceptions import PayerError
from x402_meter.client._receipts import seller_amount
from x402_meter.client._sessions import (
    SESSION_SCHEME,
    RefundAnswer,
    RefundFetch,
    SessionChannel,
)


class SessionScheme:
    """Signs ``batch-settlement`` payments on the channel each request leased."""

    scheme = SESSION_SCHEME
    find_default_asset = staticmethod(find_default_asset)

    def __init__(self, sessions: SessionChannels, payer: str) -> None:
        self.sessions = sessions
        self.payer = payer.lower()
        """The voucher signer a server's voucher must recover to, to be believed."""
        self.scheme_hooks = SimpleNamespace(on_payment_response=self._on_payment_response)

    def create_payment_payload(
        self,
        requirements: PaymentRequirements,
        extensions: dict[str, Any] | None = None,
        context: PaymentPayloadContext | None = None,
    ) -> dict[str, Any]:
        channel = current_attempt().channel
        if channel is None:
            raise PayerError("a session payment is signed only through a paying transport")
        payload: dict[str, Any] = channel.scheme.create_payment_payload(
            requirements, extensions, context
        )
        channel.signed(payload)
        return payload

    def _on_payment_response(self, ctx: PaymentResponseContext) -> RecoveredResponseResult | None:
        payload = ctx.payment_payload.payload
        channel = self.sessions.channel_of(payload)
        if channel is None:
            return None
        if ctx.settle_response is not None:
            result: RecoveredResponseResult | None = (
                channel.scheme.scheme_hooks.on_payment_response(ctx)
            )
            return result
        if isinstance(ctx.payment_required, PaymentRequired):
            return self._recover(channel, ctx.payment_required)
        return None

    def _recover(
        self, channel: SessionChannel, required: PaymentRequired
    ) -> RecoveredResponseResult | None:
        """Adopt the server's charged cumulative from a corrective 402 when a voucher this
        wallet signed covers it (or it is below what we believed), then sign again once."""
        if adopt_corrective(channel, required, self.payer):
            return RecoveredResponseResult()
        return None


def refund_fetch(channel: SessionChannel, fetch: RefundFetch, payer: str) -> RefundFetch:
    """``fetch`` for the SDK's refund flow of ``channel``: a corrective 402 to the refund
    (its voucher is behind the server's charges: a streamed answer's receipt never read, by
    this process or the one that left the channel in the book) is checked like a payment's
    before the SDK signs its one retry from the channel's state. The SDK's own recovery
    would need the chain."""

    def fetch_and_adopt(url: str, headers: dict[str, str]) -> RefundAnswer:
        answer = fetch(url, headers)
        header = answer.header("payment-required")
        if answer.status == 402 and header and headers:
            with contextlib.suppress(ValueError):
                required = decode_payment_required_header(header)
                if isinstance(required, PaymentRequired):
                    adopt_corrective(channel, required, payer)
        return answer

    return fetch_and_adopt


def adopt_corrective(channel: SessionChannel, required: PaymentRequired, payer: str) -> bool:
    """Write the charged cumulative of a corrective 402 into ``channel``'s state if it is
    believable: below what we believed, or covered by a voucher that recovers to ``payer``
    (the server can then claim that much anyway)."""
    if required.error != ERR_CUMULATIVE_AMOUNT_MISMATCH or channel.id is None:
        return False
    offer = next((a for a in required.accepts if a.scheme == SESSION_SCHEME), None)
    if offer is None:
        return False
    extra = offer.extra or {}
    state, voucher = extra.get("channelState"), extra.get("voucherState")
    if not isinstance(state, dict) or str(state.get("channelId", "")).lower() != channel.id:
        return False
    charged = seller_amount(state.get("chargedCumulativeAmount"))
    if charged is None:
        return False
    if charged > channel.charged():
        signed = (
            seller_amount(voucher.get("signedMaxClaimable")) if isinstance(voucher, dict) else None
        )
        signature = voucher.get("signature") if isinstance(voucher, dict) else None
        if signed is None or charged > signed or not isinstance(signature, str):
            return False
        if not _signed_by(payer, channel.id, signed, signature, str(offer.network)):
            return False
    context = channel.state()
    context.charged_cumulative_amount = str(charged)
    channel.storage.set(channel.id, context)
    return True


def _signed_by(payer: str, channel_id: str, amount: int, signature: str, network: str) -> bool:
    domain = get_batch_settlement_eip712_domain(get_evm_chain_id(network))
    message = {"channelId": coerce_bytes32(channel_id), "maxClaimableAmount": amount}
    signable = encode_typed_data(
        domain_data=domain, message_types=VOUCHER_TYPES, message_data=message
    )
    try:
        signer = Account.recover_message(
            signable, signature=bytes.fromhex(signature.removeprefix("0x"))
        )
    except (ValueError, TypeError):
        return False
    return str(signer).lower() == payer.lower()


__all__ = ["SessionScheme", "adopt_corrective", "refund_fetch"]
