"""Malformed and non-canonical money fields (issue 13, finding 8).

Against the local stack's ``x402-meter facilitator`` process over HTTP, a seller's
X402Meter in a real uvicorn server, and (for the property test) the facilitator app
in-process over httpx's ASGITransport with the real SDK facilitator on the local chain.
Payments are signed by the official x402 SDK client. Each test failed on main (875f48c)
before the fix: 500s in plain text, non-canonical amounts accepted.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from x402.http.utils import decode_payment_required_header, encode_payment_signature_header
from x402.schemas import PaymentPayload, PaymentRequired

from tests.channel_bodies import ChannelTerms, sdk_channel_bodies
from tests.examples.conftest import new_funded_payer
from tests.sdk_payer import requirements, sign
from tests.test_middleware_fastapi import CHAT, chat_app
from x402_meter.devstack import LocalStack, token_balance
from x402_meter.devstack.accounts import dev_account
from x402_meter.devstack.asgi_server import serving
from x402_meter.facilitator_access import ApiKeys
from x402_meter.facilitator_server import build_evm_facilitator, create_facilitator_app

pytestmark = pytest.mark.anyio

AMOUNT = 10_000
NON_CANONICAL = ["+10000", " 10000 ", "10000\n", "10_000", "010000", "１００００", "1e4", 10000]


def body_of(payload: PaymentPayload, accepted: Any) -> dict[str, Any]:
    return {
        "x402Version": 2,
        "paymentPayload": payload.model_dump(by_alias=True, exclude_none=True, mode="json"),
        "paymentRequirements": accepted.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }


def changed(body: dict[str, Any], path: str | tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``body`` with the field at ``path`` (dotted, or a tuple of keys) replaced."""
    result = copy.deepcopy(body)
    *parents, last = path.split(".") if isinstance(path, str) else path
    node = result
    for part in parents:
        node = node[part]
    node[last] = value
    return result


def assert_structured_refusal(path: str, response: httpx.Response) -> dict[str, Any]:
    """A 400 in the endpoint's own answer shape, with a machine-readable reason."""
    assert response.status_code == 400, response.text
    answer: dict[str, Any] = response.json()
    if path == "/verify":
        assert answer["isValid"] is False
        assert isinstance(answer["invalidReason"], str)
        assert isinstance(answer["invalidMessage"], str)
    else:
        assert answer["success"] is False
        assert isinstance(answer["errorReason"], str)
        assert answer["transaction"] == ""
        assert isinstance(answer["network"], str)
    return answer


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    """An event loop in its own thread, for the module's synchronous fixtures and tests."""
    with start_blocking_portal() as running:
        yield running


async def sign_bodies(stack: LocalStack) -> dict[str, dict[str, Any]]:
    bodies = {}
    payer = new_funded_payer(stack).key.hex()
    for scheme in ("exact", "upto"):
        accepted = requirements(stack, scheme, AMOUNT)
        bodies[scheme] = body_of(await sign(stack, payer, accepted), accepted)
    return bodies


@pytest.fixture(scope="module")
def signed(x402_local_stack: LocalStack, portal: BlockingPortal) -> dict[str, dict[str, Any]]:
    """Valid verify/settle bodies, ``exact`` and ``upto``, signed by the SDK (never settled)."""
    return portal.call(sign_bodies, x402_local_stack)


@pytest.fixture(scope="module")
def signed_channels(x402_local_stack: LocalStack) -> dict[str, dict[str, Any]]:
    """Valid ``batch-settlement`` bodies of every kind (deposits by funded payers)."""
    stack = x402_local_stack
    terms = ChannelTerms(
        stack.network,
        stack.asset,
        stack.asset_name,
        stack.asset_version,
        stack.pay_to,
        stack.receiver_authorizer,
    )
    payers = ["0x" + bytes(new_funded_payer(stack).key).hex() for _ in range(3)]
    return {f"batch-settlement {k}": v for k, v in sdk_channel_bodies(terms, payers).items()}


MALFORMED = [
    ("exact", "paymentPayload.payload.authorization.value", "1e4"),
    ("exact", "paymentPayload.payload.authorization.value", None),
    ("exact", "paymentPayload.payload.authorization.validBefore", "abc"),
    ("exact", "paymentPayload.payload.authorization", ["not", "an", "object"]),
    ("exact", "paymentPayload.payload.authorization.nonce", 7),
    ("exact", "paymentRequirements.amount", "abc"),
    ("exact", "paymentRequirements.maxTimeoutSeconds", "60"),
    ("upto", "paymentPayload.payload.permit2Authorization.deadline", None),
    ("upto", "paymentPayload.payload.permit2Authorization.witness", "x"),
    ("upto", "paymentPayload.payload.permit2Authorization.permitted.amount", {"n": 1}),
    ("upto", "paymentPayload.payload.signature", 12),
    ("upto", "paymentPayload.accepted", None),
    ("upto", "paymentRequirements.payTo", "nobody"),
    ("upto", "paymentRequirements.extra", []),
]


@pytest.mark.parametrize("endpoint", ["/verify", "/settle"])
@pytest.mark.parametrize(("scheme", "field", "value"), MALFORMED)
async def test_a_malformed_body_gets_a_structured_400_never_a_500(
    x402_local_stack: LocalStack,
    signed: dict[str, dict[str, Any]],
    endpoint: str,
    scheme: str,
    field: str,
    value: Any,
) -> None:
    """Finding 8: on main these answered 500 in plain text (the SDK raised deep inside)."""
    stack = x402_local_stack
    body = changed(signed[scheme], field, value)
    async with httpx.AsyncClient(timeout=60, headers=stack.facilitator_headers()) as client:
        response = await client.post(f"{stack.facilitator_url}{endpoint}", json=body)
    answer = assert_structured_refusal(endpoint, response)
    message = answer["invalidMessage"] if endpoint == "/verify" else answer["errorMessage"]
    assert field.split(".")[-1] in message


@pytest.mark.parametrize("spelling", NON_CANONICAL, ids=repr)
@pytest.mark.parametrize(
    "field",
    [
        "paymentRequirements.amount",
        "paymentPayload.accepted.amount",
        "paymentPayload.payload.permit2Authorization.permitted.amount",
    ],
)
async def test_the_facilitator_refuses_non_canonical_amounts(
    x402_local_stack: LocalStack, signed: dict[str, dict[str, Any]], field: str, spelling: Any
) -> None:
    """Finding 8: on main the facilitator read each spelling with ``int()`` and verified
    the payment as valid (the signature covers the number, not its spelling)."""
    stack = x402_local_stack
    body = changed(signed["upto"], field, spelling)
    async with httpx.AsyncClient(timeout=60, headers=stack.facilitator_headers()) as client:
        response = await client.post(f"{stack.facilitator_url}/verify", json=body)
    answer = assert_structured_refusal("/verify", response)
    assert answer["invalidReason"] in ("invalid_payload", "invalid_payment_requirements")


async def test_a_non_canonical_settle_amount_moves_no_money(
    x402_local_stack: LocalStack, signed: dict[str, dict[str, Any]]
) -> None:
    """Finding 8: on main a settle for ``"+1"`` was read as 1 and settled on chain."""
    stack = x402_local_stack
    w3 = stack.web3()
    before = token_balance(w3, stack.asset, stack.pay_to)
    body = changed(signed["upto"], "paymentRequirements.amount", "+1")
    async with httpx.AsyncClient(timeout=60, headers=stack.facilitator_headers()) as client:
        response = await client.post(f"{stack.facilitator_url}/settle", json=body)
    assert_structured_refusal("/settle", response)
    assert token_balance(w3, stack.asset, stack.pay_to) == before


@pytest.mark.parametrize(
    ("field", "spell"),
    [
        ("permit2Authorization.nonce", lambda value: "0" + value),
        ("permit2Authorization.permitted.amount", lambda value: "0" + value),
        ("permit2Authorization.deadline", int),
        ("permit2Authorization.witness.validAfter", lambda value: " " + value),
    ],
    ids=["nonce-leading-zero", "amount-leading-zero", "deadline-json-number", "valid-after-space"],
)
async def test_the_middleware_refuses_non_canonical_uints_before_serving(
    x402_local_stack: LocalStack, field: str, spell: Any
) -> None:
    """Finding 8: on main the middleware's local checks took leading zeros and JSON numbers,
    and (the facilitator reading them with ``int()``) served the answer. A second spelling
    of one nonce is also a second reservation key: one authorization, two answers. Now: 400
    with ``reason`` ``invalid_payload`` naming the field, and the app never runs."""
    stack = x402_local_stack
    app, calls = chat_app(stack)
    async with serving(app) as base, httpx.AsyncClient(timeout=60) as client:
        challenge = await client.post(f"{base}/v1/chat/completions", json=CHAT)
        required = decode_payment_required_header(challenge.headers["payment-required"])
        assert isinstance(required, PaymentRequired)
        payload = await sign(stack, new_funded_payer(stack).key.hex(), required.accepts[0])
        *parents, last = field.split(".")
        node = payload.payload
        for part in parents:
            node = node[part]
        node[last] = spell(node[last])
        header = {"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)}
        response = await client.post(f"{base}/v1/chat/completions", json=CHAT, headers=header)
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == "invalid_payload"
    assert last in response.json()["error"]
    assert calls["count"] == 0


# --- property: random payload shapes never get a 500 -------------------------------------------

API_KEY = "in-process-test-key-0123456789"
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**255, max_value=2**257)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["0", "1", "10000", "0x", "0x" + "ab" * 20, "0x" + "cd" * 32, "eip155:1"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def paths(node: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every path (a tuple of keys) to an object field of a JSON value, at every depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))


@pytest.fixture(scope="module")
def in_process_app(x402_local_stack: LocalStack) -> Starlette:
    """The facilitator app with the real SDK facilitator on the local chain (dev account 8)."""
    stack = x402_local_stack
    facilitator = build_evm_facilitator(dev_account(8).private_key, stack.rpc_url, stack.network)
    return create_facilitator_app(facilitator, api_keys=ApiKeys([API_KEY]), payees=None)


async def post_both(app: Starlette, body: Any) -> list[tuple[str, httpx.Response]]:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://f", headers=headers) as c:
        content = json.dumps(body).encode()  # NaN and Infinity too, as lenient encoders send
        return [(path, await c.post(path, content=content)) for path in ("/verify", "/settle")]


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_payload_shapes_get_a_structured_answer_never_a_500(
    in_process_app: Starlette,
    portal: BlockingPortal,
    signed: dict[str, dict[str, Any]],
    signed_channels: dict[str, dict[str, Any]],
    data: st.DataObject,
) -> None:
    """Finding 8: any field of a valid body (v2 exact, upto or any batch-settlement kind, or
    turned into v1) replaced by random JSON (objects, lists, strings, numbers, null, floats)
    gets a structured refusal (400) or a valid answer (200), never a 500 or an exception
    out of the app."""
    bodies = signed | signed_channels
    body = copy.deepcopy(bodies[data.draw(st.sampled_from(sorted(bodies)))])
    if data.draw(st.booleans()):
        body = changed(body, "paymentPayload.x402Version", 1)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        targets = sorted(paths(body))
        if not targets:
            break
        body = changed(body, data.draw(st.sampled_from(targets)), data.draw(JSON))
    for path, response in portal.call(post_both, in_process_app, body):
        assert response.status_code in (200, 400), (path, response.status_code, response.text)
        answer = response.json()
        if response.status_code == 400:
            assert_structured_refusal(path, response)
        elif path == "/verify":
            assert isinstance(answer["isValid"], bool)
        else:
            assert isinstance(answer["success"], bool)
            assert isinstance(answer["network"], str)
