"""The facilitator's strict reading of batch-settlement bodies, before the SDK's.

Bodies are built by the x402 SDK itself: its client signs deposits (EIP-3009 and Permit2)
and vouchers, its channel manager's builders make claims, sweeps and refunds. Each reads
as valid; a changed field is refused with a reason and the field's path; a receiver other
than ``payTo`` is refused, so that the payee allowlist covers every channel touched.
"""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any, Final

import pytest
from eth_account import Account
from hypothesis import given
from hypothesis import strategies as st
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

from x402_meter.devstack.accounts import PAYERS, RECEIVER_AUTHORIZER, SELLER
from x402_meter.errors import MalformedRequestError
from x402_meter.facilitator_request import (
    INVALID_PAYLOAD,
    INVALID_REQUIREMENTS,
    RECEIVER_MISMATCH,
    check_request,
)
from x402_meter.facilitator_server import MAX_BODY_BYTES

NETWORK: Final = "eip155:31337"
TOKEN: Final = "0x" + "11" * 20
STRANGER: Final = "0x" + "99" * 20
PRICE: Final = 1_000


def channel_requirements(method: str = "eip3009") -> PaymentRequirements:
    """What a batch-settlement server offers (the extra its SDK scheme writes)."""
    return PaymentRequirements(
        scheme="batch-settlement",
        network=NETWORK,
        asset=TOKEN,
        amount=str(PRICE),
        pay_to=SELLER.address,
        max_timeout_seconds=300,
        extra={
            "receiverAuthorizer": RECEIVER_AUTHORIZER.address,
            "withdrawDelay": 900,
            "name": "USD Coin",
            "version": "2",
            "assetTransferMethod": method,
            "minDeposit": str(10 * PRICE),
        },
    )


def body(payload: PaymentPayload, requirements: PaymentRequirements) -> dict[str, Any]:
    return {
        "x402Version": 2,
        "paymentPayload": payload.model_dump(by_alias=True, exclude_none=True, mode="json"),
        "paymentRequirements": requirements.model_dump(
            by_alias=True, exclude_none=True, mode="json"
        ),
    }


def payer_body(inner: dict[str, Any], requirements: PaymentRequirements) -> dict[str, Any]:
    return body(PaymentPayload(accepted=requirements, payload=inner), requirements)


def client_of(index: int) -> BatchSettlementEvmScheme:
    return BatchSettlementEvmScheme(EthAccountSigner(Account.from_key(PAYERS[index].private_key)))


def server_channel(index: int) -> tuple[ChannelConfig, str, str]:
    """A channel of payer ``index`` as the server keeps it: config, id, a voucher's signature."""
    client = client_of(index)
    requirements = channel_requirements()
    config = client.build_channel_config(requirements)
    deposit = client.create_payment_payload(requirements)
    voucher = sign_voucher(
        EthAccountSigner(Account.from_key(PAYERS[index].private_key)),
        deposit["voucher"]["channelId"],
        str(3 * PRICE),
        NETWORK,
    )
    return config, voucher.channel_id, voucher.signature


def sdk_bodies() -> dict[str, dict[str, Any]]:
    """One body of every kind the SDK sends to a facilitator."""
    bodies = {}
    for method in ("eip3009", "permit2"):
        requirements = channel_requirements(method)
        bodies[f"deposit {method}"] = payer_body(
            client_of(0).create_payment_payload(requirements), requirements
        )
    requirements = channel_requirements()
    config, channel_id, signature = server_channel(0)
    voucher = {
        "channelId": channel_id,
        "maxClaimableAmount": str(3 * PRICE),
        "signature": signature,
    }
    bodies["voucher"] = payer_body(
        {"type": "voucher", "channelConfig": config.to_dict(), "voucher": voucher}, requirements
    )
    bodies["refund request"] = payer_body(
        {"type": "refund", "channelConfig": config.to_dict(), "voucher": voucher}, requirements
    )

    manager = build_payment_requirements(SELLER.address, TOKEN, NETWORK)
    claims = []
    for index in range(3):
        claim_config, _, claim_signature = server_channel(index)
        claims.append(VoucherClaim(claim_config, str(3 * PRICE), claim_signature, str(2 * PRICE)))
    bodies["claim"] = body(build_claim_payment_payload(claims, manager, None), manager)
    bodies["settle"] = body(build_settle_payment_payload(manager, SELLER.address, TOKEN), manager)
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
    bodies["refund"] = body(refund, manager)
    return bodies


BODIES: Final = sdk_bodies()


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
    check_request(changed("settle", f"{P}.receiver", SELLER.address.lower()))


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
