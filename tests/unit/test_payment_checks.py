"""check_payment: a payment is checked against the server's own offer before any facilitator."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.mechanisms.evm.constants import X402_UPTO_PERMIT2_PROXY_ADDRESS
from x402.schemas import PaymentPayload, PaymentRequirements
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from x402_meter.assets import Asset
from x402_meter.errors import PaymentError
from x402_meter.pricing import Tariff, TokenPrice
from x402_meter.protocol.checks import Authorization, check_payment
from x402_meter.protocol.offer import Offer, PaymentTerms, v1_network_name

NETWORK = "eip155:84532"
ASSET = "0x" + "11" * 20
PAY_TO = "0x" + "2B" * 20
PAYER = "0x" + "Ab" * 20
FACILITATOR = "0x" + "3C" * 20
OTHER = "0x" + "99" * 20
NOW = 1_700_000_000
DEADLINE = NOW + 300
NONCE_32 = "0x" + "0F" * 32
SIGNATURE = "0x" + "ab" * 65
RESOURCE = "https://api.example/v1/chat/completions"
MAX_AMOUNT = 8192  # 4096 tokens at 0.000002 USD, 6 decimals

TERMS = PaymentTerms(
    network=NETWORK,
    asset=Asset(ASSET, "USD Coin", "2", 6),
    pay_to=PAY_TO,
    tariff=Tariff(TokenPrice.flat("0.000002"), 6, 4096),
    schemes=("upto", "exact"),
    description="chat",
)
OFFER = Offer.build(
    TERMS,
    kind_extras={"upto": {"facilitatorAddress": FACILITATOR}},
    facilitator_signers=frozenset({FACILITATOR.lower()}),
)
UPTO, EXACT = OFFER.requirements

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=15,
)


def upto_body() -> dict[str, Any]:
    return {
        "permit2Authorization": {
            "from": PAYER,
            "permitted": {"token": ASSET, "amount": str(MAX_AMOUNT)},
            "spender": X402_UPTO_PERMIT2_PROXY_ADDRESS,
            "nonce": "123456789",
            "deadline": str(DEADLINE),
            "witness": {"to": PAY_TO, "facilitator": FACILITATOR, "validAfter": str(NOW - 60)},
        },
        "signature": SIGNATURE,
    }


def exact_body() -> dict[str, Any]:
    return {
        "authorization": {
            "from": PAYER,
            "to": PAY_TO,
            "value": str(MAX_AMOUNT),
            "validAfter": str(NOW - 60),
            "validBefore": str(DEADLINE),
            "nonce": NONCE_32,
        },
        "signature": SIGNATURE,
    }


UPTO_FIELDS = [
    "permit2Authorization.from",
    "permit2Authorization.permitted.token",
    "permit2Authorization.permitted.amount",
    "permit2Authorization.spender",
    "permit2Authorization.nonce",
    "permit2Authorization.deadline",
    "permit2Authorization.witness.to",
    "permit2Authorization.witness.facilitator",
    "permit2Authorization.witness.validAfter",
    "signature",
]
EXACT_FIELDS = [
    "authorization.from",
    "authorization.to",
    "authorization.value",
    "authorization.validAfter",
    "authorization.validBefore",
    "authorization.nonce",
    "signature",
]


def changed(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``body`` with the field at the dotted ``path`` set to ``value``."""
    result = copy.deepcopy(body)
    *parents, last = path.split(".")
    node = result
    for part in parents:
        node = node[part]
    node[last] = value
    return result


def removed(body: dict[str, Any], path: str) -> dict[str, Any]:
    result = copy.deepcopy(body)
    *parents, last = path.split(".")
    node = result
    for part in parents:
        node = node[part]
    del node[last]
    return result


def v2(
    body: dict[str, Any], accepted: PaymentRequirements = UPTO, **changes: Any
) -> PaymentPayload:
    return PaymentPayload(accepted=accepted.model_copy(update=changes), payload=body)


def check(payload: PaymentPayload | PaymentPayloadV1, now: int = NOW) -> Authorization:
    return check_payment(payload, OFFER, now=now, resource_url=RESOURCE)


def refusal(payload: PaymentPayload | PaymentPayloadV1, now: int = NOW) -> PaymentError:
    with pytest.raises(PaymentError) as caught:
        check(payload, now)
    return caught.value


def refused_for(reason: str, payload: PaymentPayload | PaymentPayloadV1, now: int = NOW) -> None:
    error = refusal(payload, now)
    assert (error.reason, error.status_code) == (reason, 402), error.message


def test_the_offer_asks_for_max_tokens_at_the_price_in_both_schemes() -> None:
    assert [(r.scheme, r.amount) for r in OFFER.requirements] == [
        ("upto", str(MAX_AMOUNT)),
        ("exact", str(MAX_AMOUNT)),
    ]
    assert UPTO.extra["facilitatorAddress"] == FACILITATOR
    assert "facilitatorAddress" not in EXACT.extra


# --- accepted payments -------------------------------------------------------------------


def test_a_good_upto_payment_is_authorized() -> None:
    payload = v2(upto_body())
    authorization = check(payload)
    assert authorization.payload is payload
    assert authorization.scheme == "upto"
    assert authorization.version == 2
    assert authorization.payer == PAYER.lower()
    assert authorization.max_amount == MAX_AMOUNT
    assert authorization.expires_at == DEADLINE
    assert authorization.key == f"upto:{NETWORK}:{PAYER.lower()}:123456789"
    assert authorization.requirements == UPTO


def test_a_good_exact_payment_is_authorized() -> None:
    authorization = check(v2(exact_body(), EXACT))
    assert authorization.scheme == "exact"
    assert authorization.payer == PAYER.lower()
    assert authorization.max_amount == MAX_AMOUNT
    assert authorization.expires_at == DEADLINE
    assert authorization.key == f"exact:{NETWORK}:{ASSET}:{PAYER.lower()}:{NONCE_32.lower()}"
    assert authorization.requirements == EXACT


def test_the_servers_requirements_are_kept_not_the_clients_copy() -> None:
    extra = {**UPTO.extra, "facilitatorAddress": OTHER}
    payload = v2(upto_body(), max_timeout_seconds=999_999, extra=extra)
    requirements = check(payload).requirements
    assert requirements == UPTO
    assert requirements != payload.accepted


def swapped_case(address: str) -> str:
    return "0x" + address[2:].swapcase()


def test_addresses_are_compared_without_regard_to_case() -> None:
    body = changed(upto_body(), "permit2Authorization.witness.to", swapped_case(PAY_TO))
    body = changed(body, "permit2Authorization.witness.facilitator", swapped_case(FACILITATOR))
    body = changed(
        body, "permit2Authorization.spender", swapped_case(X402_UPTO_PERMIT2_PROXY_ADDRESS)
    )
    assert check(v2(body, pay_to=swapped_case(PAY_TO))).payer == PAYER.lower()


@pytest.mark.parametrize("value", [42, DEADLINE])
def test_uints_that_are_json_numbers_are_invalid(value: int) -> None:
    """The protocol sends decimal strings; a number may have gone through a float."""
    for path in ("permit2Authorization.nonce", "permit2Authorization.deadline"):
        assert_invalid(v2(changed(upto_body(), path, value)), path)


def test_a_nonce_with_leading_zeros_is_invalid_so_one_permit_has_one_key() -> None:
    spelled = changed(upto_body(), "permit2Authorization.nonce", "000123456789")
    assert_invalid(v2(spelled), "permit2Authorization.nonce")


def test_zero_spelled_as_zero_is_a_valid_uint() -> None:
    body = changed(upto_body(), "permit2Authorization.witness.validAfter", "0")
    assert check(v2(body)).expires_at == DEADLINE


def test_a_payment_valid_from_now_until_the_deadline_buffer_is_accepted() -> None:
    body = changed(upto_body(), "permit2Authorization.witness.validAfter", str(NOW))
    assert check(v2(body), now=DEADLINE - 6).expires_at == DEADLINE


def test_any_facilitator_is_accepted_when_the_offer_names_no_signers() -> None:
    offer = Offer.build(TERMS, kind_extras={}, facilitator_signers=frozenset())
    body = changed(upto_body(), "permit2Authorization.witness.facilitator", OTHER)
    authorization = check_payment(v2(body), offer, now=NOW, resource_url=RESOURCE)
    assert authorization.payer == PAYER.lower()


# --- refusals ------------------------------------------------------------------------------


def test_a_scheme_not_offered_is_unsupported() -> None:
    refused_for("unsupported_scheme", v2(upto_body(), scheme="batched"))


def test_a_scheme_missing_from_the_offer_is_unsupported() -> None:
    upto_only = PaymentTerms(NETWORK, TERMS.asset, PAY_TO, TERMS.tariff, schemes=("upto",))
    offer = Offer.build(upto_only, kind_extras={}, facilitator_signers=frozenset())
    with pytest.raises(PaymentError) as caught:
        check_payment(v2(exact_body(), EXACT), offer, now=NOW, resource_url=RESOURCE)
    assert caught.value.reason == "unsupported_scheme"


@pytest.mark.parametrize("network", ["eip155:8453", "base", "solana:mainnet"])
def test_another_network_is_a_network_mismatch(network: str) -> None:
    refused_for("network_mismatch", v2(upto_body(), network=network))


def test_another_accepted_asset_is_an_asset_mismatch() -> None:
    refused_for("asset_mismatch", v2(upto_body(), asset=OTHER))


def test_a_permit_for_another_token_is_an_asset_mismatch() -> None:
    body = changed(upto_body(), "permit2Authorization.permitted.token", OTHER)
    refused_for("asset_mismatch", v2(body))


def test_another_accepted_payee_is_a_pay_to_mismatch() -> None:
    refused_for("pay_to_mismatch", v2(upto_body(), pay_to=OTHER))


def test_a_permit_paying_someone_else_is_a_pay_to_mismatch() -> None:
    refused_for(
        "pay_to_mismatch", v2(changed(upto_body(), "permit2Authorization.witness.to", OTHER))
    )


def test_an_exact_authorization_paying_someone_else_is_a_pay_to_mismatch() -> None:
    refused_for("pay_to_mismatch", v2(changed(exact_body(), "authorization.to", OTHER), EXACT))


def test_a_permit_for_another_spender_is_a_spender_mismatch() -> None:
    refused_for("spender_mismatch", v2(changed(upto_body(), "permit2Authorization.spender", OTHER)))


def test_a_permit_naming_another_facilitator_is_a_facilitator_mismatch() -> None:
    body = changed(upto_body(), "permit2Authorization.witness.facilitator", OTHER)
    refused_for("facilitator_mismatch", v2(body))


@pytest.mark.parametrize(
    ("amount", "reason"), [(MAX_AMOUNT - 1, "amount_too_low"), (MAX_AMOUNT + 1, "amount_too_high")]
)
def test_a_permit_for_another_amount_is_refused(amount: int, reason: str) -> None:
    refused_for(
        reason, v2(changed(upto_body(), "permit2Authorization.permitted.amount", str(amount)))
    )


@pytest.mark.parametrize(
    ("amount", "reason"), [(MAX_AMOUNT - 1, "amount_too_low"), (MAX_AMOUNT + 1, "amount_too_high")]
)
def test_an_exact_authorization_for_another_value_is_refused(amount: int, reason: str) -> None:
    refused_for(reason, v2(changed(exact_body(), "authorization.value", str(amount)), EXACT))


@pytest.mark.parametrize(
    ("amount", "reason"), [(MAX_AMOUNT - 1, "amount_too_low"), (MAX_AMOUNT + 1, "amount_too_high")]
)
def test_another_accepted_amount_is_refused(amount: int, reason: str) -> None:
    refused_for(reason, v2(upto_body(), amount=str(amount)))


@pytest.mark.parametrize(
    "amount", ["lots", f"0{MAX_AMOUNT}", f"+{MAX_AMOUNT}", f" {MAX_AMOUNT} ", "8_192", "８１９２"]
)
def test_a_non_canonical_accepted_amount_is_invalid_naming_the_field(amount: str) -> None:
    error = refusal(v2(upto_body(), amount=amount))
    assert (error.reason, error.status_code) == ("invalid_payload", 400)
    assert "accepted.amount" in error.message


def test_a_permit_expiring_within_the_deadline_buffer_is_expired() -> None:
    body = changed(upto_body(), "permit2Authorization.deadline", str(NOW + 5))
    refused_for("payment_expired", v2(body))


def test_a_permit_past_its_deadline_is_expired() -> None:
    refused_for("payment_expired", v2(upto_body()), now=DEADLINE + 1)


def test_an_exact_authorization_expiring_within_the_buffer_is_expired() -> None:
    body = changed(exact_body(), "authorization.validBefore", str(NOW + 5))
    refused_for("payment_expired", v2(body, EXACT))


def test_a_permit_valid_only_later_is_not_yet_valid() -> None:
    body = changed(upto_body(), "permit2Authorization.witness.validAfter", str(NOW + 1))
    refused_for("payment_not_yet_valid", v2(body))


def test_an_exact_authorization_valid_only_later_is_not_yet_valid() -> None:
    body = changed(exact_body(), "authorization.validAfter", str(NOW + 1))
    refused_for("payment_not_yet_valid", v2(body, EXACT))


# --- malformed inner payloads ----------------------------------------------------------------

NOT_ADDRESSES = ["0x1234", "0x" + "zz" * 20, "11" * 21, "0x" + "11" * 21, 123, None, ["0x"]]
NOT_UINTS = [
    "-1",
    -1,
    "1.5",
    1.5,
    "12a",
    "",
    " 1",
    "1 ",
    "1\n",
    "+1",
    "1_0",
    "01",
    "00",
    "1e4",
    "0x10",
    "１",
    "٣",
    True,
    None,
    {},
    7,
    str(2**256),
    2**256,
]
NOT_HEX = ["0xabc", "abab", "0xzz", "0x", 5, None]


def assert_invalid(payload: PaymentPayload, path: str) -> None:
    error = refusal(payload)
    assert (error.reason, error.status_code) == ("invalid_payload", 400)
    assert path in error.message


@pytest.mark.parametrize("path", UPTO_FIELDS)
def test_a_missing_upto_field_is_invalid_naming_its_path(path: str) -> None:
    assert_invalid(v2(removed(upto_body(), path)), path)


@pytest.mark.parametrize("path", EXACT_FIELDS)
def test_a_missing_exact_field_is_invalid_naming_its_path(path: str) -> None:
    assert_invalid(v2(removed(exact_body(), path), EXACT), path)


@pytest.mark.parametrize("value", NOT_ADDRESSES)
@pytest.mark.parametrize(
    "path",
    [p for p in UPTO_FIELDS if p.endswith(("from", "token", "spender", "to", "facilitator"))],
)
def test_an_upto_address_field_that_is_not_an_address_is_invalid(path: str, value: Any) -> None:
    assert_invalid(v2(changed(upto_body(), path, value)), path)


@pytest.mark.parametrize("value", NOT_UINTS)
@pytest.mark.parametrize(
    "path", [p for p in UPTO_FIELDS if p.endswith(("amount", "nonce", "deadline", "validAfter"))]
)
def test_an_upto_uint_field_that_is_not_a_uint256_is_invalid(path: str, value: Any) -> None:
    assert_invalid(v2(changed(upto_body(), path, value)), path)


@pytest.mark.parametrize("value", NOT_UINTS)
@pytest.mark.parametrize(
    "path", ["authorization.value", "authorization.validAfter", "authorization.validBefore"]
)
def test_an_exact_uint_field_that_is_not_a_uint256_is_invalid(path: str, value: Any) -> None:
    assert_invalid(v2(changed(exact_body(), path, value), EXACT), path)


@pytest.mark.parametrize("value", NOT_ADDRESSES)
@pytest.mark.parametrize("path", ["authorization.from", "authorization.to"])
def test_an_exact_address_field_that_is_not_an_address_is_invalid(path: str, value: Any) -> None:
    assert_invalid(v2(changed(exact_body(), path, value), EXACT), path)


@pytest.mark.parametrize("value", NOT_HEX)
def test_a_signature_that_is_not_hex_is_invalid(value: Any) -> None:
    assert_invalid(v2(changed(upto_body(), "signature", value)), "signature")
    assert_invalid(v2(changed(exact_body(), "signature", value), EXACT), "signature")


@pytest.mark.parametrize(
    "nonce", ["0x1234", "0x" + "00" * 31, "0x" + "00" * 33, "0x" + "zz" * 32, 7]
)
def test_an_exact_nonce_that_is_not_bytes32_is_invalid(nonce: Any) -> None:
    assert_invalid(
        v2(changed(exact_body(), "authorization.nonce", nonce), EXACT), "authorization.nonce"
    )


def test_the_largest_uint256_is_a_valid_nonce() -> None:
    body = changed(upto_body(), "permit2Authorization.nonce", str(2**256 - 1))
    assert check(v2(body)).key.endswith(f":{2**256 - 1}")


@pytest.mark.parametrize("inner", ["permit2Authorization", "permit2Authorization.witness"])
def test_an_inner_object_that_is_not_an_object_is_invalid(inner: str) -> None:
    assert_invalid(v2(changed(upto_body(), inner, ["not", "an", "object"])), inner)


# --- v1 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("network", [NETWORK, v1_network_name(NETWORK)])
def test_a_v1_upto_payment_gets_the_requirements_in_the_v1_shape(network: str) -> None:
    assert v1_network_name(NETWORK) == "base-sepolia"
    authorization = check(PaymentPayloadV1(scheme="upto", network=network, payload=upto_body()))
    requirements = authorization.requirements
    assert isinstance(requirements, PaymentRequirementsV1)
    assert requirements.scheme == "upto"
    assert requirements.network == "base-sepolia"
    assert requirements.max_amount_required == str(MAX_AMOUNT)
    assert requirements.resource == RESOURCE
    assert requirements.description == "chat"
    assert requirements.pay_to == PAY_TO
    assert requirements.asset == ASSET
    assert requirements.extra == UPTO.extra
    assert authorization.version == 1
    assert authorization.key == f"upto:{NETWORK}:{PAYER.lower()}:123456789"


def test_a_v1_payment_on_another_network_is_a_network_mismatch() -> None:
    refused_for(
        "network_mismatch", PaymentPayloadV1(scheme="upto", network="base", payload=upto_body())
    )


def test_a_v1_exact_payment_is_checked_like_a_v2_one() -> None:
    body = changed(exact_body(), "authorization.value", str(MAX_AMOUNT + 1))
    refused_for("amount_too_high", PaymentPayloadV1(scheme="exact", network=NETWORK, payload=body))


def test_settle_requirements_set_the_charged_amount_in_the_v2_shape() -> None:
    authorization = check(v2(upto_body()))
    settle = authorization.settle_requirements(123)
    assert isinstance(settle, PaymentRequirements)
    assert settle == UPTO.model_copy(update={"amount": "123"})
    assert authorization.requirements == UPTO  # unchanged


def test_settle_requirements_set_the_charged_amount_in_the_v1_shape() -> None:
    authorization = check(PaymentPayloadV1(scheme="upto", network=NETWORK, payload=upto_body()))
    settle = authorization.settle_requirements(123)
    assert isinstance(settle, PaymentRequirementsV1)
    assert settle.max_amount_required == "123"
    assert settle.model_copy(update={"max_amount_required": str(MAX_AMOUNT)}) == (
        authorization.requirements
    )


# --- properties ------------------------------------------------------------------------------


def outcome(payload: PaymentPayload | PaymentPayloadV1, now: int) -> None:
    """Checks ``payload``: it is authorized, or refused with a specific reason and status."""
    try:
        check(payload, now)
    except PaymentError as error:
        refused = error
    else:
        return
    assert refused.status_code in (400, 402)
    assert refused.reason != PaymentError.reason


@settings(max_examples=300)
@given(
    inner=st.dictionaries(st.text(max_size=30), JSON_VALUES), scheme=st.sampled_from([UPTO, EXACT])
)
def test_arbitrary_inner_payloads_only_raise_payment_errors(
    inner: dict[str, Any], scheme: PaymentRequirements
) -> None:
    outcome(v2(inner, scheme), NOW)


@settings(max_examples=400)
@given(
    data=st.data(),
    scheme=st.sampled_from(["upto", "exact"]),
    now=st.integers(min_value=0, max_value=2**64),
    version=st.sampled_from([1, 2]),
)
def test_payloads_with_arbitrary_field_values_only_raise_payment_errors(
    data: st.DataObject, scheme: str, now: int, version: int
) -> None:
    body = upto_body() if scheme == "upto" else exact_body()
    fields = UPTO_FIELDS if scheme == "upto" else EXACT_FIELDS
    for path in data.draw(st.lists(st.sampled_from(fields), max_size=3, unique=True)):
        body = changed(body, path, data.draw(JSON_VALUES))
    payload: PaymentPayload | PaymentPayloadV1
    if version == 1:
        payload = PaymentPayloadV1(scheme=scheme, network=NETWORK, payload=body)
    else:
        payload = v2(body, UPTO if scheme == "upto" else EXACT)
    outcome(payload, now)
