"""Facilitator bodies of every batch-settlement kind, made by the x402 SDK itself.

The SDK's client signs deposits (EIP-3009 and Permit2) and vouchers; the builders of the
SDK's channel manager make claims, sweeps and refunds. Nothing here is sent to a chain:
the bodies are what a facilitator would be asked, for the tests of how it reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from eth_account import Account
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme, sign_voucher
from x402.mechanisms.evm.batch_settlement.server.channel_manager_common import (
    build_claim_payment_payload,
    build_payment_requirements,
    build_refund_payment_payload,
    build_settle_payment_payload,
)
from x402.mechanisms.evm.batch_settlement.server.storage import Channel
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig, VoucherClaim
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequirements

PRICE: Final = 1_000


@dataclass(frozen=True, slots=True)
class ChannelTerms:
    """Whose channels, in which token, on which chain."""

    network: str
    token: str
    token_name: str
    token_version: str
    pay_to: str
    receiver_authorizer: str

    def requirements(self, method: str = "eip3009") -> PaymentRequirements:
        """What a batch-settlement server offers (the extra its SDK scheme writes)."""
        return PaymentRequirements(
            scheme="batch-settlement",
            network=self.network,
            asset=self.token,
            amount=str(PRICE),
            pay_to=self.pay_to,
            max_timeout_seconds=300,
            extra={
                "receiverAuthorizer": self.receiver_authorizer,
                "withdrawDelay": 900,
                "name": self.token_name,
                "version": self.token_version,
                "assetTransferMethod": method,
                "minDeposit": str(10 * PRICE),
            },
        )


def body_of(payload: PaymentPayload, requirements: PaymentRequirements) -> dict[str, Any]:
    """A /verify or /settle body, as the SDK's facilitator client sends it."""
    return {
        "x402Version": 2,
        "paymentPayload": payload.model_dump(by_alias=True, exclude_none=True, mode="json"),
        "paymentRequirements": requirements.model_dump(
            by_alias=True, exclude_none=True, mode="json"
        ),
    }


def _payer_body(inner: dict[str, Any], requirements: PaymentRequirements) -> dict[str, Any]:
    return body_of(PaymentPayload(accepted=requirements, payload=inner), requirements)


def _channel(terms: ChannelTerms, payer_key: str) -> tuple[ChannelConfig, str, str]:
    """A payer's channel as the server keeps it: config, id, a voucher's signature."""
    signer = EthAccountSigner(Account.from_key(payer_key))
    requirements = terms.requirements()
    client = BatchSettlementEvmScheme(signer)
    config = client.build_channel_config(requirements)
    channel_id = client.create_payment_payload(requirements)["voucher"]["channelId"]
    voucher = sign_voucher(signer, channel_id, str(3 * PRICE), terms.network)
    return config, voucher.channel_id, voucher.signature


def sdk_channel_bodies(terms: ChannelTerms, payer_keys: list[str]) -> dict[str, dict[str, Any]]:
    """One body of every kind the SDK sends to a facilitator; claims of three channels."""
    bodies = {}
    first = BatchSettlementEvmScheme(EthAccountSigner(Account.from_key(payer_keys[0])))
    for method in ("eip3009", "permit2"):
        requirements = terms.requirements(method)
        bodies[f"deposit {method}"] = _payer_body(
            first.create_payment_payload(requirements), requirements
        )
    requirements = terms.requirements()
    config, channel_id, signature = _channel(terms, payer_keys[0])
    voucher = {
        "channelId": channel_id,
        "maxClaimableAmount": str(3 * PRICE),
        "signature": signature,
    }
    for kind in ("voucher", "refund"):
        inner = {"type": kind, "channelConfig": config.to_dict(), "voucher": voucher}
        bodies["refund request" if kind == "refund" else kind] = _payer_body(inner, requirements)

    manager = build_payment_requirements(terms.pay_to, terms.token, terms.network)
    claims = []
    for key in payer_keys[:3]:
        claim_config, _, claim_signature = _channel(terms, key)
        claims.append(VoucherClaim(claim_config, str(3 * PRICE), claim_signature, str(2 * PRICE)))
    bodies["claim"] = body_of(build_claim_payment_payload(claims, manager, None), manager)
    sweep = build_settle_payment_payload(manager, terms.pay_to, terms.token)
    bodies["settle"] = body_of(sweep, manager)
    channel = Channel(
        channel_id=channel_id,
        channel_config=config,
        charged_cumulative_amount=str(2 * PRICE),
        signed_max_claimable=str(3 * PRICE),
        signature=signature,
        balance=str(10 * PRICE),
    )
    refund = build_refund_payment_payload(
        channel, claims[:1], manager, str(8 * PRICE), "0", "0x" + "ab" * 65, None
    )
    bodies["refund"] = body_of(refund, manager)
    return bodies
