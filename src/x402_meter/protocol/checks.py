"""Local checks of a payment against the requirements the server computed itself.

Run before the facilitator sees anything: a payment for another payee, asset, network or
amount, or one about to expire, is refused here with a precise reason, and the requirements
sent on to the facilitator are always the server's, never the client's copy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from x402.mechanisms.evm.constants import PERMIT2_DEADLINE_BUFFER, X402_UPTO_PERMIT2_PROXY_ADDRESS
from x402.schemas import PaymentPayload, PaymentRequirements
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from x402_meter.errors import PaymentError
from x402_meter.protocol.amounts import NotCanonicalUintError, parse_uint
from x402_meter.protocol.offer import Offer, v1_network_name, v1_requirements

if TYPE_CHECKING:
    from x402_meter.schemes import PaymentScheme

_ADDRESS: Final = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX: Final = re.compile(r"0x(?:[0-9a-fA-F]{2})+")
BYTES32: Final = re.compile(r"0x[0-9a-fA-F]{64}")
_UPTO_PROXY: Final = X402_UPTO_PERMIT2_PROXY_ADDRESS.lower()


@dataclass(frozen=True, slots=True)
class Authorization:
    """A locally checked payment: who pays, at most how much, until when, under which key."""

    payload: PaymentPayload | PaymentPayloadV1
    requirements: PaymentRequirements | PaymentRequirementsV1
    """The server's requirements, in the payload's protocol version: what the facilitator gets."""
    scheme: str
    payer: str
    max_amount: int
    expires_at: int
    """Unix time after which the authorization can no longer be settled."""
    key: str
    """Identifies the authorization on chain: a second request with the same key is a replay."""

    @property
    def version(self) -> int:
        return self.payload.x402_version

    def settle_requirements(self, amount: int) -> PaymentRequirements | PaymentRequirementsV1:
        """The server's requirements with the amount actually charged."""
        if isinstance(self.requirements, PaymentRequirementsV1):
            return self.requirements.model_copy(update={"max_amount_required": str(amount)})
        return self.requirements.model_copy(update={"amount": str(amount)})


def invalid(path: str, expected: str) -> PaymentError:
    """400 ``invalid_payload``: the field at ``path`` is not what it must be."""
    return PaymentError("invalid_payload", f"{path} must be {expected}", status_code=400)


def _refuse(reason: str, message: str) -> PaymentError:
    return PaymentError(reason, message)


def field_at(obj: Any, path: str) -> Any:
    """The value at a dotted ``path`` of a JSON object; 400 if it is missing."""
    node = obj
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise invalid(path, "present")
        node = node[part]
    return node


def address_at(obj: Any, path: str) -> str:
    """An EVM address at ``path``, lower case; 400 if it is not one."""
    value = field_at(obj, path)
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise invalid(path, "an address (0x + 40 hex digits)")
    return value.lower()


def uint_at(obj: Any, path: str) -> int:
    """A canonical unsigned decimal string at ``path``; 400 if it is not one."""
    # One spelling per number: "010", "+10" or a JSON number would let the key we reserve
    # and the value the facilitator reads disagree about which authorization this is.
    try:
        return parse_uint(field_at(obj, path))
    except NotCanonicalUintError as exc:
        raise invalid(path, f"a canonical unsigned 256-bit decimal string ({exc})") from exc


def hex_at(obj: Any, path: str, pattern: re.Pattern[str] = _HEX) -> str:
    """``0x``-prefixed hex at ``path`` (whole bytes, or ``pattern``), lower case; 400 if not."""
    value = field_at(obj, path)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise invalid(path, "0x-prefixed hex")
    return value.lower()


def _check_amount(authorized: int, required: int) -> None:
    if authorized < required:
        raise _refuse("amount_too_low", f"authorized {authorized}, this request needs {required}")
    if authorized > required:
        raise _refuse(
            "amount_too_high", f"authorized {authorized}, requirements ask exactly {required}"
        )


def _check_window(valid_after: int, valid_until: int, now: int) -> None:
    # Facilitators refuse authorizations closer than this to their end: so do we, early.
    if valid_until < now + PERMIT2_DEADLINE_BUFFER:
        raise _refuse("payment_expired", "the payment authorization has expired")
    if valid_after > now:
        raise _refuse("payment_not_yet_valid", "the payment authorization is not valid yet")


def match_offer(payload: PaymentPayload | PaymentPayloadV1, offer: Offer) -> PaymentRequirements:
    """The offered requirements the payload claims to fulfil, by scheme then network."""
    scheme = payload.get_scheme()
    candidates = [r for r in offer.requirements if r.scheme == scheme]
    if not candidates:
        offered = ", ".join(r.scheme for r in offer.requirements)
        raise _refuse(
            "unsupported_scheme", f"scheme {scheme!r} is not offered here (offered: {offered})"
        )
    network = payload.get_network()
    for requirements in candidates:
        if network in (requirements.network, v1_network_name(requirements.network)):
            break
    else:
        raise _refuse("network_mismatch", f"network {network!r} is not offered here")
    if isinstance(payload, PaymentPayload):
        accepted = payload.accepted
        if accepted.asset.lower() != requirements.asset.lower():
            raise _refuse("asset_mismatch", "accepted.asset is not the asset asked for")
        if accepted.pay_to.lower() != requirements.pay_to.lower():
            raise _refuse("pay_to_mismatch", "accepted.payTo is not this server's payee")
    return requirements


def check_upto_payload(
    body: dict[str, Any], requirements: PaymentRequirements, offer: Offer, now: int
) -> tuple[str, int, str]:
    """An ``upto`` (Permit2) payload's body: its payer, deadline and single-use key."""
    auth = "permit2Authorization"
    payer = address_at(body, f"{auth}.from")
    token = address_at(body, f"{auth}.permitted.token")
    amount = uint_at(body, f"{auth}.permitted.amount")
    spender = address_at(body, f"{auth}.spender")
    nonce = uint_at(body, f"{auth}.nonce")
    deadline = uint_at(body, f"{auth}.deadline")
    to = address_at(body, f"{auth}.witness.to")
    facilitator = address_at(body, f"{auth}.witness.facilitator")
    valid_after = uint_at(body, f"{auth}.witness.validAfter")
    hex_at(body, "signature")
    if token != requirements.asset.lower():
        raise _refuse("asset_mismatch", "the permit is for another token")
    if to != requirements.pay_to.lower():
        raise _refuse("pay_to_mismatch", "the permit pays someone else")
    if spender != _UPTO_PROXY:
        raise _refuse("spender_mismatch", "the permit's spender must be the x402 upto proxy")
    if offer.facilitator_signers and facilitator not in offer.facilitator_signers:
        raise _refuse("facilitator_mismatch", "the permit names another facilitator")
    _check_amount(amount, int(requirements.amount))
    _check_window(valid_after, deadline, now)
    return payer, deadline, f"upto:{requirements.network}:{payer}:{nonce}"


def check_exact_payload(
    body: dict[str, Any], requirements: PaymentRequirements, now: int
) -> tuple[str, int, str]:
    """An ``exact`` (EIP-3009) payload's body: its payer, deadline and single-use key."""
    auth = "authorization"
    payer = address_at(body, f"{auth}.from")
    to = address_at(body, f"{auth}.to")
    value = uint_at(body, f"{auth}.value")
    valid_after = uint_at(body, f"{auth}.validAfter")
    valid_before = uint_at(body, f"{auth}.validBefore")
    nonce = hex_at(body, f"{auth}.nonce", BYTES32)
    hex_at(body, "signature")
    if to != requirements.pay_to.lower():
        raise _refuse("pay_to_mismatch", "the authorization pays someone else")
    _check_amount(value, int(requirements.amount))
    _check_window(valid_after, valid_before, now)
    return (
        payer,
        valid_before,
        f"exact:{requirements.network}:{requirements.asset.lower()}:{payer}:{nonce}",
    )


def check_payment(
    payload: PaymentPayload | PaymentPayloadV1,
    offer: Offer,
    *,
    now: int,
    resource_url: str,
    schemes: Mapping[str, PaymentScheme] | None = None,
) -> Authorization:
    """Check ``payload`` against ``offer``; raise a PaymentError with a reason if it fails.

    ``schemes``: the implementations (default: the built-in stateless ones)."""
    requirements = match_offer(payload, offer)
    if isinstance(payload, PaymentPayload):
        accepted = {"accepted": {"amount": payload.accepted.amount}}
        _check_amount(uint_at(accepted, "accepted.amount"), int(requirements.amount))
    if schemes is None:
        from x402_meter.schemes import BUILT_IN  # the schemes build on this module

        schemes = BUILT_IN
    checked = schemes[requirements.scheme].check(payload.payload, requirements, offer, now)
    sent: PaymentRequirements | PaymentRequirementsV1 = requirements
    if isinstance(payload, PaymentPayloadV1):
        sent = v1_requirements(requirements, resource_url, offer.terms)
    return Authorization(
        payload=payload,
        requirements=sent,
        scheme=requirements.scheme,
        payer=checked.payer,
        max_amount=int(requirements.amount),
        expires_at=checked.expires_at,
        key=checked.key,
    )
