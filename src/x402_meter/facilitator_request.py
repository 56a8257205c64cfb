"""The facilitator's strict reading of a ``/verify`` or ``/settle`` body, before the SDK's.

The SDK's facilitator assumes well-typed input: a ``null`` value, an ``authorization`` that
is a list or a ``validBefore`` of ``"abc"`` raised deep inside it (a 500), and Python's
``int()`` read ``"+10000"``, ``" 10000 "``, ``"10_000"``, ``"010000"`` or full-width digits
as 10000. This module checks the raw JSON first: every object is an object, every address
an address, every uint256 a canonical decimal string (``protocol.amounts.parse_uint``), in
the payload and the requirements, v1 and v2, ``upto``, ``exact`` and ``batch-settlement``
(its five payload types: deposit, voucher, refund, claim, settle). What fails is a
``MalformedRequestError`` with a reason and the path of the field, which the server
answers with a structured 400. Schemes it does not know are left to the SDK (which refuses
them as unsupported).

A ``batch-settlement`` body also names the receivers whose channels it touches (a
channel's ``receiver``, every claimed channel's, the swept ``receiver``); each must be the
requirements' ``payTo``, so that the payee allowlist, which checks ``payTo``, covers every
channel a caller can make the facilitator claim, sweep or refund.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError
from x402.schemas import PaymentPayload, PaymentRequirements
from x402.schemas.helpers import parse_payment_payload, parse_payment_requirements
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from x402_meter.errors import MalformedRequestError as MalformedRequestError
from x402_meter.protocol.amounts import NotCanonicalUintError, parse_uint

INVALID_REQUEST: Final = "invalid_request"
"""The body is not a JSON object with ``paymentPayload`` and ``paymentRequirements``."""
INVALID_PAYLOAD: Final = "invalid_payload"
INVALID_REQUIREMENTS: Final = "invalid_payment_requirements"
SCHEME_MISMATCH: Final = "scheme_mismatch"
RECEIVER_MISMATCH: Final = "invalid_batch_settlement_evm_receiver_mismatch"
"""A batch-settlement payload's receiver is not ``payTo`` (the SDK's reason for the same)."""
BATCH_SETTLEMENT: Final = "batch-settlement"

_ADDRESS: Final = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX: Final = re.compile(r"0x(?:[0-9a-fA-F]{2})+")
_BYTES32: Final = re.compile(r"0x[0-9a-fA-F]{64}")
_EIP2612: Final = "eip2612GasSponsoring"


@dataclass(frozen=True, slots=True)
class FacilitatorRequest:
    """A checked verify/settle body, parsed into the SDK's models."""

    payload: PaymentPayload | PaymentPayloadV1
    requirements: PaymentRequirements | PaymentRequirementsV1

    @property
    def pay_to(self) -> str:
        return self.requirements.pay_to


class _Fields:
    """Typed reads of one JSON object; a wrong field raises with its dotted path."""

    def __init__(self, reason: str, node: Any, path: str) -> None:
        if not isinstance(node, dict):
            raise MalformedRequestError(reason, f"{path} must be a JSON object")
        self.reason = reason
        self.node: dict[str, Any] = node
        self.path = path

    def fail(self, name: str, expected: str) -> MalformedRequestError:
        return MalformedRequestError(self.reason, f"{self.path}.{name} must be {expected}")

    def get(self, name: str) -> Any:
        if name not in self.node:
            raise self.fail(name, "present")
        return self.node[name]

    def child(self, name: str) -> _Fields:
        return _Fields(self.reason, self.get(name), f"{self.path}.{name}")

    def text(self, name: str) -> str:
        value = self.get(name)
        if not isinstance(value, str):
            raise self.fail(name, "a string")
        return value

    def optional_object(self, name: str) -> None:
        if self.node.get(name) is not None and not isinstance(self.node[name], dict):
            raise self.fail(name, "a JSON object")

    def matching(self, name: str, pattern: re.Pattern[str], expected: str) -> str:
        value = self.get(name)
        if not isinstance(value, str) or pattern.fullmatch(value) is None:
            raise self.fail(name, expected)
        return value

    def address(self, name: str) -> str:
        return self.matching(name, _ADDRESS, "an address (0x + 40 hex digits)")

    def uint(self, name: str, bits: int = 256) -> int:
        try:
            value = parse_uint(self.get(name))
        except NotCanonicalUintError as exc:
            raise self.fail(name, f"a canonical unsigned decimal string ({exc})") from exc
        if value >= 2**bits:
            raise self.fail(name, f"a uint{bits} (below 2**{bits})")
        return value

    def seconds(self, name: str, *, minimum: int = 1, bits: int = 63) -> int:
        """A JSON integer (not a string, not a bool) in ``[minimum, 2**bits)``."""
        value = self.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < 2**bits:
            raise self.fail(name, f"an integer from {minimum} below 2**{bits}")
        return value

    def bytes32(self, name: str) -> str:
        return self.matching(name, _BYTES32, "0x + 64 hex digits")

    def signature(self, name: str) -> str:
        return self.matching(name, _HEX, "0x-prefixed hex")

    def items(self, name: str, *, allow_empty: bool = False) -> list[_Fields]:
        """A JSON array of objects (non-empty unless ``allow_empty``)."""
        value = self.get(name)
        if not isinstance(value, list) or not (value or allow_empty):
            raise self.fail(name, "a JSON array" if allow_empty else "a non-empty JSON array")
        return [
            _Fields(self.reason, item, f"{self.path}.{name}[{i}]") for i, item in enumerate(value)
        ]


def _requirements(fields: _Fields, version: int) -> str:
    """Check payment requirements (v1 or v2); return their scheme."""
    scheme = fields.text("scheme")
    fields.text("network")
    fields.address("asset")
    fields.address("payTo")
    # The SDK's channel manager sends claims, sweeps and refunds with maxTimeoutSeconds 0.
    fields.seconds("maxTimeoutSeconds", minimum=0 if scheme == BATCH_SETTLEMENT else 1)
    if version == 1:
        fields.uint("maxAmountRequired")
        fields.text("resource")
    else:
        fields.uint("amount")
    fields.optional_object("extra")
    if scheme == BATCH_SETTLEMENT and isinstance(fields.node.get("extra"), dict):
        _channel_extra(fields.child("extra"))
    return scheme


def _channel_extra(extra: _Fields) -> None:
    """The batch-settlement fields of ``extra`` that the SDK reads, where present."""
    if "receiverAuthorizer" in extra.node:
        extra.address("receiverAuthorizer")
    if "withdrawDelay" in extra.node:
        extra.seconds("withdrawDelay", minimum=0, bits=40)
    if "minDeposit" in extra.node:
        extra.uint("minDeposit")


def _permit2_transfer(auth: _Fields) -> _Fields:
    """A Permit2 witness transfer's common fields; returns its witness, scheme-specific."""
    auth.address("from")
    permitted = auth.child("permitted")
    permitted.address("token")
    permitted.uint("amount")
    auth.address("spender")
    auth.uint("nonce")
    auth.uint("deadline")
    return auth.child("witness")


def _permit2(body: _Fields, *, upto: bool) -> None:
    witness = _permit2_transfer(body.child("permit2Authorization"))
    witness.address("to")
    witness.uint("validAfter")
    if upto:
        witness.address("facilitator")


def _eip3009(body: _Fields) -> None:
    auth = body.child("authorization")
    auth.address("from")
    auth.address("to")
    auth.uint("value")
    auth.uint("validAfter")
    auth.uint("validBefore")
    auth.bytes32("nonce")


# --- batch-settlement: channel payloads -------------------------------------------------


def _channel_config(config: _Fields) -> str:
    """A ``ChannelConfig``; returns its receiver."""
    for name in ("payer", "payerAuthorizer", "receiverAuthorizer", "token"):
        config.address(name)
    config.seconds("withdrawDelay", minimum=0, bits=40)  # uint40 in the typed data
    config.bytes32("salt")
    return config.address("receiver")


def _voucher(voucher: _Fields) -> None:
    voucher.bytes32("channelId")
    voucher.uint("maxClaimableAmount", bits=128)
    voucher.signature("signature")


def _claims(body: _Fields, *, allow_empty: bool = False) -> list[str]:
    """``claims``: voucher claims; returns their channels' receivers."""
    receivers = []
    for claim in body.items("claims", allow_empty=allow_empty):
        voucher = claim.child("voucher")
        receivers.append(_channel_config(voucher.child("channel")))
        voucher.uint("maxClaimableAmount", bits=128)
        claim.signature("signature")
        claim.uint("totalClaimed", bits=128)
    return receivers


def _deposit(deposit: _Fields) -> None:
    deposit.uint("amount", bits=128)
    authorization = deposit.child("authorization")
    present = [
        name
        for name in ("erc3009Authorization", "permit2Authorization")
        if name in authorization.node
    ]
    if len(present) != 1:
        raise MalformedRequestError(
            deposit.reason,
            f"{authorization.path} must hold exactly one of erc3009Authorization,"
            " permit2Authorization",
        )
    if present == ["erc3009Authorization"]:
        erc3009 = authorization.child("erc3009Authorization")
        erc3009.uint("validAfter")
        erc3009.uint("validBefore")
        erc3009.bytes32("salt")
        erc3009.signature("signature")
    else:
        permit2 = authorization.child("permit2Authorization")
        _permit2_transfer(permit2).bytes32("channelId")
        permit2.signature("signature")


def _optional_signatures(body: _Fields, *names: str) -> None:
    for name in names:
        if body.node.get(name) is not None:
            body.signature(name)


def _refund(body: _Fields) -> list[str]:
    """A refund's own fields; returns the receivers of the claims it carries."""
    if "refundNonce" not in body.node:  # a payer's request: the amount is optional
        if body.node.get("amount") is not None:
            body.uint("amount", bits=128)
        return []
    # The server's refund for /settle: amount and nonce resolved, outstanding claims added.
    body.uint("amount", bits=128)
    body.uint("refundNonce")
    _optional_signatures(body, "refundAuthorizerSignature", "claimAuthorizerSignature")
    return _claims(body, allow_empty=True)


def _channel_payload(body: _Fields) -> list[str]:
    """A batch-settlement payload of any type; returns the receivers it names."""
    kind = body.text("type")
    if kind in ("deposit", "voucher", "refund"):
        receivers = [_channel_config(body.child("channelConfig"))]
        _voucher(body.child("voucher"))
        if kind == "deposit":
            _deposit(body.child("deposit"))
        elif kind == "refund":
            receivers += _refund(body)
        return receivers
    if kind == "claim":
        _optional_signatures(body, "claimAuthorizerSignature")
        return _claims(body)
    if kind == "settle":
        body.address("token")
        return [body.address("receiver")]
    raise body.fail("type", "deposit, voucher, refund, claim or settle")


def _inner_payload(body: _Fields, scheme: str) -> list[str]:
    """Check the scheme's own payload; returns the receivers it names (batch-settlement)."""
    if scheme == BATCH_SETTLEMENT:
        return _channel_payload(body)
    if scheme == "upto":
        _permit2(body, upto=True)
    elif scheme == "exact" and "permit2Authorization" in body.node:
        _permit2(body, upto=False)
    elif scheme == "exact":
        _eip3009(body)
    else:
        return []  # not ours to read: the SDK refuses a scheme it has not registered
    body.signature("signature")
    return []


def _extensions(payload: _Fields) -> None:
    payload.optional_object("extensions")
    extensions = payload.node.get("extensions") or {}
    sponsoring = extensions.get(_EIP2612)
    if not isinstance(sponsoring, dict) or not isinstance(sponsoring.get("info"), dict):
        return  # absent or not usable: the SDK ignores it
    info = _Fields(
        INVALID_PAYLOAD, sponsoring["info"], f"paymentPayload.extensions.{_EIP2612}.info"
    )
    for name in ("amount", "nonce", "deadline"):
        if name in info.node:
            info.uint(name)


def _version(payload: _Fields) -> int:
    version = payload.get("x402Version")
    if type(version) is not int or version not in (1, 2):  # not True, not 2.0
        raise MalformedRequestError(INVALID_PAYLOAD, "paymentPayload.x402Version must be 1 or 2")
    return version


def check_request(data: Any) -> FacilitatorRequest:
    """Check a decoded verify/settle body strictly, then parse it with the SDK's models."""
    if not isinstance(data, dict):
        raise MalformedRequestError(INVALID_REQUEST, "the body must be a JSON object")
    payload = _Fields(INVALID_PAYLOAD, data.get("paymentPayload"), "paymentPayload")
    requirements = _Fields(
        INVALID_REQUIREMENTS, data.get("paymentRequirements"), "paymentRequirements"
    )
    version = _version(payload)
    if "x402Version" in data and data["x402Version"] != version:
        raise MalformedRequestError(
            INVALID_REQUEST, "x402Version must be the paymentPayload's x402Version"
        )
    required_scheme = _requirements(requirements, version)
    if version == 1:
        scheme = payload.text("scheme")
        payload.text("network")
    else:
        scheme = _requirements(payload.child("accepted"), 2)
        payload.optional_object("resource")
    if scheme != required_scheme:
        raise MalformedRequestError(
            SCHEME_MISMATCH,
            f"the payload is for {scheme!r}, the requirements for {required_scheme!r}",
        )
    receivers = _inner_payload(payload.child("payload"), scheme)
    pay_to = str(requirements.node["payTo"]).lower()
    if any(receiver.lower() != pay_to for receiver in receivers):
        raise MalformedRequestError(
            RECEIVER_MISMATCH, "every channel's receiver must be paymentRequirements.payTo"
        )
    _extensions(payload)
    try:
        parsed = parse_payment_payload(payload.node)
        return FacilitatorRequest(
            parsed, parse_payment_requirements(parsed.x402_version, requirements.node)
        )
    except (ValueError, TypeError, KeyError, ValidationError) as exc:
        raise MalformedRequestError(INVALID_PAYLOAD, f"invalid verify/settle body: {exc}") from exc


def decode_json(body: bytes) -> Any:
    """The body's JSON value; a body that is not JSON is malformed."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedRequestError(INVALID_REQUEST, "the body is not JSON") from exc


def network_of(data: Any) -> str:
    """The requirements' network if the body names one as a string, else "" (for refusals)."""
    if isinstance(data, dict):
        requirements = data.get("paymentRequirements")
        if isinstance(requirements, dict) and isinstance(requirements.get("network"), str):
            return str(requirements["network"])
    return ""
