"""What a 402 offers, field by field, as strict clients read it.

x402 v1 requires ``resource`` (a URL), ``description`` and ``mimeType`` as strings in every
``accepts`` entry (x402-fetch 1.x refuses the whole 402 otherwise); thirdweb's client reads
``extra.primaryType`` to know how to sign ``exact``.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from x402.schemas.v1 import PaymentRequirementsV1

from x402_meter.assets import Asset
from x402_meter.pricing import Tariff, TokenPrice
from x402_meter.protocol.offer import Offer, PaymentTerms, v1_network_name

ASSET = "0x" + "11" * 20
PAY_TO = "0x" + "2B" * 20
RESOURCE = "https://api.example/v1/chat/completions"
V1_REQUIRED_STRINGS = (
    "scheme",
    "network",
    "maxAmountRequired",
    "resource",
    "description",
    "mimeType",
    "payTo",
    "asset",
)


def offer(
    *,
    description: str | None = "chat",
    network: str = "eip155:84532",
    eip3009: bool = True,
    schemes: tuple[str, ...] = ("upto", "exact"),
) -> Offer:
    terms = PaymentTerms(
        network=network,
        asset=Asset(ASSET, "USD Coin", "2", 6, eip3009=eip3009),
        pay_to=PAY_TO,
        tariff=Tariff(TokenPrice.flat("0.000002"), 6, 4096),
        schemes=schemes,  # type: ignore[arg-type]
        description=description,
    )
    return Offer.build(terms, kind_extras={}, facilitator_signers=frozenset())


def v1_body_entries(built: Offer) -> list[dict[str, object]]:
    """The ``accepts`` entries as the 402's JSON body carries them."""
    return [
        json.loads(r.model_dump_json(by_alias=True, exclude_none=True))
        for r in built.v1_requirements(RESOURCE)
    ]


@given(description=st.none() | st.text(max_size=40))
def test_every_v1_entry_carries_each_field_v1_requires_as_a_string(
    description: str | None,
) -> None:
    for entry in v1_body_entries(offer(description=description)):
        missing = [name for name in V1_REQUIRED_STRINGS if not isinstance(entry.get(name), str)]
        assert missing == [], entry
        assert isinstance(entry["maxTimeoutSeconds"], int)
        assert entry["resource"] == RESOURCE
        assert entry["description"] == (description or "")
        assert entry["mimeType"] == "application/json"
        PaymentRequirementsV1.model_validate(entry)


def test_v1_entries_name_the_network_as_v1_does_where_it_has_a_name() -> None:
    assert {e["network"] for e in v1_body_entries(offer())} == {"base-sepolia"}
    assert v1_network_name("eip155:8453") == "base"
    # No v1 name for the local dev chain: the CAIP-2 id stays (v1 clients cannot pay there).
    assert {e["network"] for e in v1_body_entries(offer(network="eip155:31337"))} == {
        "eip155:31337"
    }


def test_the_v2_resource_says_what_the_route_answers_with() -> None:
    required = offer().payment_required(RESOURCE, "payment required")
    assert required.resource is not None
    assert (required.resource.url, required.resource.mime_type) == (RESOURCE, "application/json")


def test_exact_names_its_eip3009_signature_in_primary_type_where_the_token_has_it() -> None:
    upto, exact = offer().requirements
    assert exact.extra["primaryType"] == "TransferWithAuthorization"
    assert "primaryType" not in upto.extra  # upto is a Permit2 witness transfer
    (exact_without,) = offer(eip3009=False, schemes=("exact",)).requirements
    assert "primaryType" not in exact_without.extra


def test_the_ledger_gets_each_requirement_as_it_serializes_whichever_it_was_paid_with() -> None:
    built = offer()
    for offered in built.requirements:
        assert built.json_of(offered) == offered.model_dump_json(by_alias=True, exclude_none=True)
    # A v1 payment is checked against requirements made for it: serialized as they are.
    for v1 in built.v1_requirements(RESOURCE):
        assert "maxAmountRequired" in json.loads(built.json_of(v1))
        assert built.json_of(v1) == v1.model_dump_json(by_alias=True, exclude_none=True)
    # An offer made from another (a corrective 402) serializes its own requirements.
    corrected = built.with_extra("upto", {"note": "corrected"})
    upto = next(r for r in corrected.requirements if r.scheme == "upto")
    assert json.loads(corrected.json_of(upto))["extra"]["note"] == "corrected"
