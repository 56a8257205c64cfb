"""A ``batch-settlement`` payload read strictly: a deposit, a voucher or a refund on one
channel.

Every field is read before anything else looks at it (addresses, canonical uints, bytes32,
hex signatures): a malformed payload is a 400 naming the field, never a 500. The channel's
binding (its id is the EIP-712 hash of its config) and its terms (receiver, receiver
authorizer, token, withdraw delay) are checked against the server's own requirements with
the SDK's functions (``channel_terms.py`` remembers the configs that passed;
``voucher_signature.py`` checks the voucher's signature). No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from x402.mechanisms.evm.batch_settlement.constants import SCHEME_BATCH_SETTLEMENT
from x402.mechanisms.evm.batch_settlement.errors import ERR_INVALID_PAYLOAD_TYPE
from x402.mechanisms.evm.batch_settlement.facilitator.utils import validate_channel_config
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import channel_id_binding_error
from x402.schemas import PaymentRequirements

from x402_meter.errors import PaymentError
from x402_meter.protocol.checks import BYTES32, address_at, field_at, hex_at, invalid, uint_at

UINT128_MAX: Final = 2**128 - 1
"""The contract keeps balances and cumulative amounts in uint128."""
UINT40_MAX: Final = 2**40 - 1
ZERO_ADDRESS: Final = "0x" + "00" * 20

Kind = Literal["deposit", "voucher"]


@dataclass(frozen=True, slots=True)
class ChannelPayment:
    """What a deposit or voucher payload says, read and checked."""

    kind: Kind
    config: ChannelConfig
    channel_id: str
    """Lower case."""
    cumulative: int
    """The voucher's ``maxClaimableAmount``."""
    signature: str
    deposit: int | None
    """A deposit's amount (None for a voucher)."""

    @property
    def payer(self) -> str:
        return self.config.payer.lower()

    @property
    def contract_wallet(self) -> bool:
        """A zero ``payerAuthorizer``: the voucher is an EIP-1271 signature of the payer,
        which only the chain (the facilitator) can check."""
        return self.config.payer_authorizer.lower() == ZERO_ADDRESS

    def voucher(self) -> dict[str, str]:
        """The voucher as the wire carries it."""
        return {
            "channelId": self.channel_id,
            "maxClaimableAmount": str(self.cumulative),
            "signature": self.signature,
        }


def _bounded(value: int, path: str, bound: int, name: str) -> int:
    if value > bound:
        raise invalid(path, f"at most {name}")
    return value


def read_channel_payment(body: dict[str, Any]) -> ChannelPayment:
    """The payload's body, read strictly; ``PaymentError`` (400 for malformed) if it fails."""
    kind = body.get("type") if isinstance(body, dict) else None
    if kind not in ("deposit", "voucher"):
        shown = kind if isinstance(kind, str) and len(kind) <= 20 else "?"
        raise PaymentError(
            ERR_INVALID_PAYLOAD_TYPE,
            f"a {SCHEME_BATCH_SETTLEMENT} payment here is a deposit or a voucher, not {shown!r}",
        )
    config, channel_id, cumulative, signature = _read_channel_voucher(body)
    deposit = None
    if kind == "deposit":
        deposit = _bounded(
            uint_at(body, "deposit.amount"), "deposit.amount", UINT128_MAX, "2^128-1"
        )
        authorization = field_at(body, "deposit.authorization")
        if not isinstance(authorization, dict) or not authorization:
            raise invalid("deposit.authorization", "an object")
    return ChannelPayment(kind, config, channel_id, cumulative, signature, deposit)


def is_refund(body: Any) -> bool:
    """Whether a ``batch-settlement`` payload's body asks for a cooperative refund (what
    the SDK's ``is_refund_payload`` looks at: its ``type``)."""
    return isinstance(body, dict) and body.get("type") == "refund"


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """A payer's cooperative refund, read and checked: a voucher for what the channel has
    been charged (a zero-charge voucher), and optionally how much to take back."""

    payment: ChannelPayment
    """The channel and the voucher (``kind`` is ``"voucher"``; no deposit)."""
    amount: int | None
    """The amount asked for (None: all that is not charged)."""


def read_channel_refund(body: dict[str, Any]) -> RefundRequest:
    """A ``type: "refund"`` body, read strictly; ``PaymentError`` (400 for malformed)."""
    if not is_refund(body):
        raise PaymentError(ERR_INVALID_PAYLOAD_TYPE, "this is not a refund")
    config, channel_id, cumulative, signature = _read_channel_voucher(body)
    amount = None
    if "amount" in body:
        amount = _bounded(uint_at(body, "amount"), "amount", UINT128_MAX, "2^128-1")
    payment = ChannelPayment("voucher", config, channel_id, cumulative, signature, None)
    return RefundRequest(payment, amount)


def _read_channel_voucher(body: dict[str, Any]) -> tuple[ChannelConfig, str, int, str]:
    """The channel config and the voucher of a deposit, voucher or refund body."""
    config_path = "channelConfig"
    delay_value = field_at(body, f"{config_path}.withdrawDelay")
    if isinstance(delay_value, bool) or not isinstance(delay_value, int) or delay_value < 0:
        raise invalid(f"{config_path}.withdrawDelay", "a non-negative integer")
    config = ChannelConfig(
        payer=address_at(body, f"{config_path}.payer"),
        payer_authorizer=address_at(body, f"{config_path}.payerAuthorizer"),
        receiver=address_at(body, f"{config_path}.receiver"),
        receiver_authorizer=address_at(body, f"{config_path}.receiverAuthorizer"),
        token=address_at(body, f"{config_path}.token"),
        withdraw_delay=_bounded(delay_value, f"{config_path}.withdrawDelay", UINT40_MAX, "2^40-1"),
        salt=hex_at(body, f"{config_path}.salt", BYTES32),
    )
    channel_id = hex_at(body, "voucher.channelId", BYTES32)
    cumulative = _bounded(
        uint_at(body, "voucher.maxClaimableAmount"),
        "voucher.maxClaimableAmount",
        UINT128_MAX,
        "2^128-1",
    )
    signature = hex_at(body, "voucher.signature")
    return config, channel_id, cumulative, signature


def check_channel_terms(payment: ChannelPayment, requirements: PaymentRequirements) -> None:
    """The channel id binds the config, on this network, and the config is this server's
    (receiver, receiver authorizer, token, withdraw delay); ``PaymentError`` if not."""
    network = str(requirements.network)
    reason = channel_id_binding_error(payment.config, payment.channel_id, network)
    reason = reason or validate_channel_config(payment.config, payment.channel_id, requirements)
    if reason is not None:
        raise PaymentError(reason, "the channel does not match this server's terms")
