"""A property of refunds: whatever a payer sends as a refund (garbage in any field, another
type, an amount of any shape, a voucher for any cumulative, by any signer, for any
channel), the answer is never a 500, and money moves only the one way a refund may move it:
from the escrow to the channel's payer, never below what the seller has charged.

Real stack: one X402Meter in uvicorn (in a blocking portal's loop), one channel opened by
the official SDK client, the contracts on anvil. Before and after each example the chain
is read: the token held by the payer, the escrow and ``payTo`` adds up to the same, the payer
gains exactly what the meter says it refunded, and the channel still holds every charge.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from eth_account.signers.local import LocalAccount
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from x402.http.utils import decode_payment_response_header
from x402.schemas import PaymentPayload

from tests.channel_seller import Balances, payer_scheme
from tests.examples.conftest import new_funded_payer
from tests.security.test_session_refunds import Refunder, record_of
from tests.test_channels_sdk import contracts
from tests.test_session_refunds import channel_config, chat, swept
from tests.test_sessions_sdk import QUESTION, Seller, seller
from x402_meter.devstack import LocalStack
from x402_meter.devstack.accounts import PAYERS


@dataclass
class Session:
    stack: LocalStack
    shop: Seller
    payer: LocalAccount
    refunder: Refunder


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as portal:
        yield portal


@pytest.fixture(scope="module")
def session(
    x402_local_stack: LocalStack, portal: BlockingPortal, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Session]:
    stack = x402_local_stack
    tmp_path: Path = tmp_path_factory.mktemp("refund-property")
    with portal.wrap_async_context_manager(seller(stack, tmp_path)) as shop:
        payer = new_funded_payer(stack)
        portal.call(chat, shop, payer_scheme(stack, payer), stack, [QUESTION])
        yield Session(stack, shop, payer, Refunder(stack, shop, payer))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**260) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=5,
)
FIELDS = [
    "type",
    "amount",
    "voucher",
    "voucher.channelId",
    "voucher.maxClaimableAmount",
    "voucher.signature",
    "channelConfig",
    "channelConfig.payer",
    "channelConfig.payerAuthorizer",
    "channelConfig.receiver",
    "channelConfig.receiverAuthorizer",
    "channelConfig.token",
    "channelConfig.withdrawDelay",
    "channelConfig.salt",
]
AMOUNTS = (
    st.integers(1, 1000).map(str)
    | st.sampled_from([None, "1", "5", "10", "100"])  # None: all that is left (rarely)
    | st.sampled_from(["0", "01", "+1", "1.0", " 1", "-1", "0x1", ""])
    | st.integers(0, 2**129).map(str)
)


@st.composite
def attempts(draw: st.DrawFn) -> dict[str, Any]:
    """A refund voucher for the charged cumulative + ``offset``, by ``signer``, asking for
    ``amount``, sent by ``method``, with ``garbage`` in a field."""
    return {
        "offset": draw(st.sampled_from([0, 0, 0, -1, 1]) | st.integers(-(10**6), 10**6)),
        "signer": draw(st.sampled_from([None, None, None, PAYERS[2].private_key])),
        "amount": draw(AMOUNTS),
        "garbage": draw(st.none() | st.none() | st.tuples(st.sampled_from(FIELDS), JSON)),
        "method": draw(st.sampled_from(["GET", "GET", "POST", "PUT"])),
    }


def tampered(payload: PaymentPayload, path: str, value: Any) -> PaymentPayload:
    inner = copy.deepcopy(payload.payload)
    node = inner
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return PaymentPayload(x402_version=2, accepted=payload.accepted, payload=inner)


def total(balances: Balances) -> int:
    return balances.payer + balances.contract + balances.pay_to


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(attempt=attempts())
def test_a_refund_moves_money_only_to_its_payer_and_never_with_a_500(
    session: Session, portal: BlockingPortal, attempt: dict[str, Any]
) -> None:
    stack, shop, refunder = session.stack, session.shop, session.refunder
    before = portal.call(record_of, shop)
    money = Balances.read(stack, session.payer.address, shop.pay_to)
    cumulative = max(before.charged + attempt["offset"], 0)
    signer = None if attempt["signer"] is None else _account(attempt["signer"])
    payload = portal.call(
        lambda: refunder.payload(cumulative, amount=attempt["amount"], signer=signer)
    )
    if attempt["garbage"] is not None:
        payload = tampered(payload, *attempt["garbage"])

    answer: httpx.Response = portal.call(refunder.send, payload, attempt["method"])
    if answer.status_code == 200:
        portal.call(swept, shop)  # the sweep it woke has landed: balances are still

    after = portal.call(record_of, shop)
    moved = Balances.read(stack, session.payer.address, shop.pay_to)
    if payload.payload.get("type") == "refund" or attempt["method"] == "POST":
        assert answer.status_code in (200, 400, 402), answer.text  # the meter's
    else:  # not a refund, on a method the route does not meter: the app's own 405
        assert answer.status_code == 405, answer.text
    reason = answer.json().get("reason", "app") if answer.status_code != 200 else None
    event(f"{answer.status_code} {reason}")
    assert total(moved) == total(money)  # nobody else got anything
    assert after.charged == before.charged  # a refund never changes what was charged
    on_chain = contracts(stack).channel(channel_config(after))
    assert on_chain.balance >= after.charged  # every charge is still the seller's to claim
    gained = moved.payer - money.payer
    if answer.status_code != 200:
        assert gained == 0
        assert after.refunded == before.refunded
        return
    settled = decode_payment_response_header(answer.headers["payment-response"])
    assert settled.success
    assert gained == int(settled.amount or "") == after.refunded - before.refunded > 0
    assert on_chain.total_claimed == after.claimed == after.charged


def _account(private_key: str) -> LocalAccount:
    from eth_account import Account

    account: LocalAccount = Account.from_key(private_key)
    return account
