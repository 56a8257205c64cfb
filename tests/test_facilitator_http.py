"""The facilitator's HTTP surface answers bad requests with 400 and a reason, never a 500."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sdk_payer import requirements
from x402_meter.devstack import LocalStack
from x402_meter.facilitator_server import MAX_BODY_BYTES


def test_supported_lists_exact_upto_and_batch_settlement_with_their_addresses(
    x402_local_stack: LocalStack,
) -> None:
    body = httpx.get(f"{x402_local_stack.facilitator_url}/supported").json()
    kinds = {(kind["scheme"], kind["network"]): kind for kind in body["kinds"]}
    network = x402_local_stack.network
    assert set(kinds) == {("exact", network), ("upto", network), ("batch-settlement", network)}
    assert kinds["upto", network]["extra"]["facilitatorAddress"] == (
        x402_local_stack.facilitator_address
    )
    assert kinds["batch-settlement", network]["extra"] == {
        "receiverAuthorizer": x402_local_stack.receiver_authorizer
    }


@pytest.mark.parametrize("path", ["/verify", "/settle"])
@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b"{}", b'{"paymentPayload": {}, "paymentRequirements": {}}'],
)
def test_malformed_bodies_get_400(x402_local_stack: LocalStack, path: str, body: bytes) -> None:
    stack = x402_local_stack
    response = httpx.post(
        f"{stack.facilitator_url}{path}", content=body, headers=stack.facilitator_headers()
    )
    assert response.status_code == 400
    answer = response.json()
    assert answer.get("invalidReason", answer.get("errorReason")) in (
        "invalid_request",
        "invalid_payload",
    )


def test_oversized_bodies_get_400(x402_local_stack: LocalStack) -> None:
    stack = x402_local_stack
    response = httpx.post(
        f"{stack.facilitator_url}/verify",
        content=b" " * (MAX_BODY_BYTES + 1),
        headers=stack.facilitator_headers(),
    )
    assert response.status_code == 400
    assert response.json()["invalidReason"] == "invalid_request"


def test_an_unregistered_scheme_is_invalid_not_an_error(x402_local_stack: LocalStack) -> None:
    stack = x402_local_stack
    accepted = requirements(stack, "exact", 1).model_copy(update={"scheme": "deferred"})
    body = {
        "x402Version": 2,
        "paymentPayload": {
            "x402Version": 2,
            "accepted": accepted.model_dump(by_alias=True),
            "payload": {},
        },
        "paymentRequirements": accepted.model_dump(by_alias=True),
    }
    response = httpx.post(
        f"{stack.facilitator_url}/verify", json=body, headers=stack.facilitator_headers()
    )
    assert response.status_code == 200
    assert response.json() == {
        "isValid": False,
        "invalidReason": "unsupported_scheme",
        "invalidMessage": f"No scheme 'deferred' registered for network '{stack.network}'",
    }


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_random_json_never_gets_a_server_error(
    x402_local_stack: LocalStack, payload: object
) -> None:
    stack = x402_local_stack
    for path in ("/verify", "/settle"):
        body = {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": payload}
        response = httpx.post(
            f"{stack.facilitator_url}{path}", json=body, headers=stack.facilitator_headers()
        )
        assert response.status_code in (200, 400)
