"""A property of voucher admission: whatever a payer sends on an open channel (a forged or
replayed voucher, a stale or inflated cumulative, another channel, another config, a voucher
above the balance, garbage in any field), the answer is never a 500 and never free: the app
runs only for the one valid voucher (the channel's charged cumulative plus the request's
maximum, signed by the payer on its own channel), and then the channel is charged for it.

In-process: real EIP-712 signatures, the meter's own checks, the in-process facilitator's
channel ledger; one meter and one channel for all examples, read again before each.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from x402.http import encode_payment_signature_header
from x402.schemas import PaymentPayload, PaymentRequirements

from tests.inprocess.facilitator import InProcessFacilitator
from tests.inprocess.harness import CHAT, QUESTION, chat_app
from tests.inprocess.sessions import ChannelPayer, channel_of, send, session_meter, session_offer
from tests.security.test_sessions import Counted
from x402_meter import X402Meter
from x402_meter.devstack.accounts import PAYERS

DEPOSIT_TIMES = 6
"""The channel holds six maximums: vouchers above it are over the balance."""


@dataclass
class Session:
    meter: X402Meter
    app: Counted
    client: httpx.AsyncClient
    payer: ChannelPayer
    requirements: PaymentRequirements
    seen: list[PaymentPayload]
    """Every voucher the payer signed that was admitted (for replays)."""


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as portal:
        yield portal


@pytest.fixture(scope="module")
def session(portal: BlockingPortal) -> Iterator[Session]:
    app = Counted(chat_app())
    meter = session_meter(app, InProcessFacilitator())
    payer = ChannelPayer()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=meter), base_url="http://test")

    async def open_channel() -> PaymentRequirements:
        requirements = await session_offer(client, QUESTION)
        maximum = int(requirements.amount)
        deposit = payer.deposit(requirements, maximum, DEPOSIT_TIMES * maximum)
        assert (await send(client, QUESTION, deposit)).status_code == 200
        return requirements

    requirements = portal.call(open_channel)
    yield Session(meter, app, client, payer, requirements, [])
    portal.call(client.aclose)
    portal.call(meter.runtime.settler.aclose)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**260) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=5,
)
FIELDS = [
    "type",
    "voucher.channelId",
    "voucher.maxClaimableAmount",
    "voucher.signature",
    "channelConfig.payer",
    "channelConfig.payerAuthorizer",
    "channelConfig.receiver",
    "channelConfig.receiverAuthorizer",
    "channelConfig.token",
    "channelConfig.withdrawDelay",
    "channelConfig.salt",
]


@st.composite
def attempts(draw: st.DrawFn) -> dict[str, Any]:
    """What a payer sends: a voucher for charged + maximum + ``offset``, by ``signer``, on
    its own channel or another, with ``garbage`` in a field; or an earlier voucher again."""
    return {
        "replay": draw(st.booleans()),
        "offset": draw(
            st.sampled_from([0, 0, 0, -1, 1])
            | st.integers(-(10**6), 10**6)
            | st.integers(0, 10 * 8300)
        ),
        "signer": draw(st.sampled_from([None, None, PAYERS[2].private_key])),
        "channel_id": draw(st.none() | st.sampled_from(["0x" + "12" * 32, "0x" + "ab" * 32])),
        "garbage": draw(st.none() | st.tuples(st.sampled_from(FIELDS), JSON)),
    }


def tampered(payload: PaymentPayload, path: str, value: Any) -> PaymentPayload:
    inner = copy.deepcopy(payload.payload)
    node = inner
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return PaymentPayload(x402_version=2, accepted=payload.accepted, payload=inner)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(attempt=attempts())
def test_a_voucher_is_answered_only_when_it_pays_and_never_with_a_500(
    session: Session, portal: BlockingPortal, attempt: dict[str, Any]
) -> None:
    requirements, payer = session.requirements, session.payer
    channel_id, maximum = payer.channel_id(requirements), int(requirements.amount)
    before = portal.call(channel_of, session.meter, channel_id)
    if attempt["replay"] and session.seen:
        payload = session.seen[attempt["offset"] % len(session.seen)]
    else:
        signer = ChannelPayer(attempt["signer"]) if attempt["signer"] else payer
        cumulative = max(before.charged + maximum + attempt["offset"], 0)
        payload = signer.voucher(
            requirements,
            cumulative,
            channel_id=attempt["channel_id"],
            config=payer.config(requirements),
        )
        if attempt["garbage"] is not None:
            payload = tampered(payload, *attempt["garbage"])
    runs = session.app.runs
    answer = portal.call(send, session.client, QUESTION, payload)
    after = portal.call(channel_of, session.meter, channel_id)
    assert answer.status_code in (200, 400, 402), answer.text
    reason = answer.json().get("reason") if answer.status_code != 200 else None
    event(f"{answer.status_code} {reason}")
    if answer.status_code != 200:
        assert session.app.runs == runs
        assert after.charged == before.charged
        return
    voucher = payload.payload["voucher"]
    assert session.app.runs == runs + 1
    assert voucher["channelId"].lower() == channel_id
    assert int(voucher["maxClaimableAmount"]) == before.charged + maximum
    assert voucher["maxClaimableAmount"] == str(int(voucher["maxClaimableAmount"]))
    assert int(voucher["maxClaimableAmount"]) <= before.balance
    assert payer.voucher(requirements, before.charged + maximum).payload["voucher"] == voucher
    assert before.charged < after.charged <= int(voucher["maxClaimableAmount"])
    assert after.voucher_max == int(voucher["maxClaimableAmount"])
    session.seen.append(payload)


def test_the_property_sees_answers_too(session: Session, portal: BlockingPortal) -> None:
    """The honest voucher is served (so the property above is not vacuous)."""
    requirements, payer = session.requirements, session.payer
    channel = portal.call(channel_of, session.meter, payer.channel_id(requirements))
    cumulative = channel.charged + int(requirements.amount)
    if cumulative > channel.balance:
        pytest.skip("the channel was used up by the property's examples")
    header = encode_payment_signature_header(payer.voucher(requirements, cumulative))

    async def post() -> int:
        reply = await session.client.post(
            CHAT, json=QUESTION, headers={"payment-signature": header}
        )
        return reply.status_code

    assert portal.call(post) == 200
