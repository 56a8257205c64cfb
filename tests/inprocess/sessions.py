"""Sessions in the in-process tier: a meter that offers ``batch-settlement``, and a payer that
signs deposits and vouchers with the official SDK's client functions, locally.

The payer signs exactly what a test asks (a cumulative, a deposit), so that a test can send
what an honest client would and what an attacker would; the official SDK client itself pays
in ``test_sessions.py`` and against the chain (``tests/test_sessions_sdk.py``).
"""

from __future__ import annotations

from typing import Any, Final

import httpx
from eth_account import Account
from x402.http.utils import decode_payment_response_header
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme as PayerScheme
from x402.mechanisms.evm.batch_settlement.client import sign_voucher
from x402.mechanisms.evm.batch_settlement.client.eip3009 import (
    create_batch_settlement_eip3009_deposit_payload,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequirements

from tests.inprocess.facilitator import NETWORK, InProcessFacilitator
from tests.inprocess.harness import CHAT, PAYER, App, header, metered, offered
from x402_meter import X402Meter
from x402_meter.store import ChannelRecord

SESSIONS: Final = "batch-settlement"


def session_meter(app: App, facilitator: InProcessFacilitator, **overrides: Any) -> X402Meter:
    """A meter offering sessions beside ``upto``."""
    return metered(app, facilitator, **({"schemes": ("upto", SESSIONS)} | overrides))


class ChannelPayer:
    """Signs deposits and vouchers on its channel with the SDK's client functions."""

    def __init__(self, private_key: str = PAYER.private_key) -> None:
        self.signer = EthAccountSigner(Account.from_key(private_key))
        self.scheme = PayerScheme(self.signer)

    @property
    def address(self) -> str:
        return self.signer.address

    def config(self, requirements: PaymentRequirements) -> ChannelConfig:
        return self.scheme.build_channel_config(requirements)

    def channel_id(self, requirements: PaymentRequirements) -> str:
        return compute_channel_id(self.config(requirements), NETWORK).lower()

    def deposit(
        self, requirements: PaymentRequirements, cumulative: int, amount: int
    ) -> PaymentPayload:
        """A deposit of ``amount`` with a voucher for ``cumulative``."""
        inner = create_batch_settlement_eip3009_deposit_payload(
            self.signer,
            requirements,
            self.config(requirements),
            str(amount),
            str(cumulative),
            None,
        ).to_dict()
        return PaymentPayload(x402_version=2, accepted=requirements, payload=inner)

    def voucher(
        self,
        requirements: PaymentRequirements,
        cumulative: int,
        *,
        channel_id: str | None = None,
        config: ChannelConfig | None = None,
    ) -> PaymentPayload:
        """A voucher for ``cumulative`` (on another channel id or config, if given)."""
        config = config or self.config(requirements)
        channel_id = channel_id or compute_channel_id(config, NETWORK)
        voucher = sign_voucher(self.signer, channel_id, str(cumulative), NETWORK)
        inner = {
            "type": "voucher",
            "channelConfig": config.to_dict(),
            "voucher": voucher.to_dict(),
        }
        return PaymentPayload(x402_version=2, accepted=requirements, payload=inner)


async def session_offer(client: httpx.AsyncClient, body: Any) -> PaymentRequirements:
    """What the 402 offers for ``body`` as a session."""
    challenge = await client.post(CHAT, json=body)
    assert challenge.status_code == 402, challenge.text
    return offered(challenge, SESSIONS)


async def send(client: httpx.AsyncClient, body: Any, payload: PaymentPayload) -> httpx.Response:
    return await client.post(CHAT, json=body, headers=header(payload))


def settlement(response: httpx.Response) -> dict[str, Any]:
    """The answer's decoded ``PAYMENT-RESPONSE``."""
    decoded = decode_payment_response_header(response.headers["payment-response"])
    return decoded.model_dump(by_alias=True, exclude_none=True)


async def channel_of(meter: X402Meter, channel_id: str) -> ChannelRecord:
    channels = meter.runtime.channels
    assert channels is not None
    record = await channels.get(channel_id)
    assert record is not None
    return record
