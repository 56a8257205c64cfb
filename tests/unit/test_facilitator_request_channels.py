"""The facilitator's strict reading of batch-settlement bodies, before the SDK's.

Bodies are built by the x402 SDK itself (tests/channel_bodies.py): its client signs
deposits and vouchers, its channel manager's builders make claims, sweeps and refunds. Each reads
as valid; a changed field is refused with a reason and the field's path; a receiver other
than ``payTo`` is refused, so that the payee allowlist covers every channel touched.
"""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any, Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.channel_bodies import ChannelTerms, sdk_channel_bodies
from x402_meter.devstack.accounts import PAYERS, RECEIVER_AUTHORIZER, SELLER
from x402_meter.errors import MalformedRequestError
from x402_meter.facilitator_request import (
    INVALID_PAYLOAD,
    INVALID_REQUIREMENTS,
    RECEIVER_MISMATCH,
    check_request,
)
from x402_meter.facilitator_server import MAX_BODY_BYTES

TERMS: Final = ChannelTerms(
    network="eip155:31337",
    token="0x" + "11" * 20,
    token_name="USD Coin",
    token_version="2",
    pay_to=SELLER.address,
    receiver_authorizer=RECEIVER_AUTHORIZER.address,
)
STRANGER: Final = "0x" + "99" * 20
BODIES: Final = sdk_channel_bodies(TERMS, [payer.private_key for payer in PAYERS])


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_every_body_the_sdk_sends_reads_as_valid(kind: str) -> None:
    checked = check_request(BODIES[kind])
    assert checked.requirements.scheme == "batch-settlement"
    assert checked.pay_to == SELLER.address


def test_a_claim_of_a_hundred_vouchers_fits_the_body_limit() -> None:
    claim = copy.deepcopy(BODIES["claim"])
    entries = claim["paymentPayload"]["payload"]["claims"]
    claim["paymentPayload"]["payload"]["claims"] = (entries * 34)[:100]
    assert len(json.dumps(claim).encode()) < MAX_BODY_BYTES


def at(node: Any, path: str) -> tuple[Any, str | int]:
    """The container of the field at dotted ``path`` (list indices as numbers) and its key."""
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, int(last) if isinstance(node, list) else last


def changed(kind: str, path: str, value: Any) -> dict[str, Any]:
    """A copy of the SDK's body of ``kind`` with the field at ``path`` set to ``value``."""
    return changed_in(copy.deepcopy(BODIES[kind]), path, value)


def changed_in(body_: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node, key = at(body_, path)
    node[key] = value
    return body_


P = "paymentPayload.payload"
RECEIVERS = [
    ("deposit eip3009", f"{P}.channelConfig.receiver"),
    ("deposit permit2", f"{P}.channelConfig.receiver"),
    ("voucher", f"{P}.channelConfig.receiver"),
    ("refund request", f"{P}.channelConfig.receiver"),
    ("refund", f"{P}.channelConfig.receiver"),
    ("refund", f"{P}.claims.0.voucher.channel.receiver"),
    ("claim", f"{P}.claims.2.voucher.channel.receiver"),
    ("settle", f"{P}.receiver"),
]


@pytest.mark.parametrize(("kind", "path"), RECEIVERS)
def test_a_receiver_other_than_pay_to_is_refused(kind: str, path: str) -> None:
    """A caller cannot name a payee the allowlist checks (payTo) and touch another's channel."""
    with pytest.raises(MalformedRequestError) as refused:
        check_request(changed(kind, path, STRANGER))
    assert refused.value.reason == RECEIVER_MISMATCH


def test_a_receiver_in_another_case_is_the_same_receiver() -> None:
    check_request(changed("settle", f"{P}.receiver", TERMS.pay_to.lower()))


MALFORMED = [
    ("deposit eip3009", f"{P}.deposit.amount", "+10000"),
    ("deposit eip3009", f"{P}.deposit.amount", 10000),
    ("deposit eip3009", f"{P}.deposit.amount", str(2**128)),
    ("deposit eip3009", f"{P}.deposit.authorization.erc3009Authorization.validBefore", "1e9"),
    ("deposit eip3009", f"{P}.deposit.authorization.erc3009Authorization.salt", "0x1234"),
    ("deposit eip3009", f"{P}.deposit.authorization.erc3009Authorization.signature", 7),
    ("deposit eip3009", f"{P}.deposit.authorization", {}),
    ("deposit permit2", f"{P}.deposit.authorization.permit2Authorization.nonce", "01"),
    ("deposit permit2", f"{P}.deposit.authorization.permit2Authorization.witness", None),
    ("voucher", f"{P}.voucher.maxClaimableAmount", "3000.0"),
    ("voucher", f"{P}.voucher.channelId", "0x" + "ab" * 31),
    ("voucher", f"{P}.channelConfig.withdrawDelay", "900"),
    ("voucher", f"{P}.channelConfig.withdrawDelay", 2**40),
    ("voucher", f"{P}.channelConfig.withdrawDelay", True),
    ("voucher", f"{P}.channelConfig.salt", None),
    ("voucher", f"{P}.channelConfig.payerAuthorizer", "0x0"),
    ("voucher", f"{P}.type", "vouchers"),
    ("refund request", f"{P}.amount", "-1"),
    ("refund", f"{P}.refundNonce", " 0"),
    ("refund", f"{P}.claims", {}),
    ("refund", f"{P}.refundAuthorizerSignature", "ab"),
    ("claim", f"{P}.claims", []),
    ("claim", f"{P}.claims.1.totalClaimed", "0x10"),
    ("claim", f"{P}.claims.0.voucher", "x"),
    ("claim", f"{P}.claimAuthorizerSignature", 1),
    ("settle", f"{P}.token", "USDC"),
]


@pytest.mark.parametrize(("kind", "path", "value"), MALFORMED)
def test_a_malformed_field_is_refused_by_name(kind: str, path: str, value: Any) -> None:
    with pytest.raises(MalformedRequestError) as refused:
        check_request(changed(kind, path, value))
    assert refused.value.reason == INVALID_PAYLOAD
    field = [part for part in path.split(".") if not part.isdigit()][-1]
    assert field in str(refused.value)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("paymentRequirements.extra.receiverAuthorizer", "me"),
        ("paymentRequirements.extra.withdrawDelay", "900"),
        ("paymentRequirements.extra.minDeposit", "1e4"),
        ("paymentRequirements.maxTimeoutSeconds", -1),
    ],
)
def test_malformed_channel_requirements_are_refused(path: str, value: Any) -> None:
    with pytest.raises(MalformedRequestError) as refused:
        check_request(changed("deposit eip3009", path, value))
    assert refused.value.reason == INVALID_REQUIREMENTS
    assert path.split(".")[-1] in str(refused.value)


def test_the_channel_managers_zero_timeout_is_accepted_for_channels_only() -> None:
    assert BODIES["claim"]["paymentRequirements"]["maxTimeoutSeconds"] == 0
    check_request(BODIES["claim"])
    upto = changed("claim", "paymentRequirements.scheme", "upto")
    upto = changed_in(upto, "paymentPayload.accepted.scheme", "upto")
    with pytest.raises(MalformedRequestError, match="maxTimeoutSeconds"):
        check_request(upto)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["0", "900", "0x" + "ab" * 20, "0x" + "cd" * 32, "deposit", "claim"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)


def paths(node: Any, prefix: str = "") -> list[str]:
    """Every dotted path to a field of a JSON value, list items included."""
    found = []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, value in items:
        path = f"{prefix}{key}"
        found += [path, *paths(value, f"{path}.")]
    return found


@given(data=st.data())
def test_any_changed_field_is_read_or_refused_never_an_exception(data: st.DataObject) -> None:
    """Whatever a field becomes, check_request parses the body or raises its own error."""
    kind = data.draw(st.sampled_from(sorted(BODIES)))
    path = data.draw(st.sampled_from([p for p in paths(BODIES[kind]) if "." in p]))
    with contextlib.suppress(MalformedRequestError):
        check_request(changed(kind, path, data.draw(JSON)))
