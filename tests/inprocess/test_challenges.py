"""402 bodies: what a request without a payment is asked to pay, in v2 and v1 shapes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.apps import max_amount
from tests.inprocess.facilitator import NETWORK, InProcessFacilitator
from tests.inprocess.harness import ASSET, CHAT, QUESTION, calling, chat_app, metered, offered
from x402_meter.devstack.accounts import FACILITATOR, SELLER

pytestmark = pytest.mark.anyio


async def test_a_request_without_payment_gets_a_402_in_the_v2_header_and_the_v1_body() -> None:
    async with calling(metered(chat_app(), InProcessFacilitator())) as client:
        challenge = await client.post(CHAT, json=QUESTION)
    assert challenge.status_code == 402
    upto = offered(challenge)
    assert (upto.scheme, upto.network, upto.asset, upto.pay_to) == (
        "upto",
        NETWORK,
        ASSET.address,
        SELLER.address,
    )
    assert upto.extra["facilitatorAddress"] == FACILITATOR.address
    assert upto.extra["assetTransferMethod"] == "permit2"
    body = challenge.json()
    assert (body["x402Version"], body["reason"]) == (1, "payment_required")
    (v1,) = body["accepts"]
    assert (v1["scheme"], v1["maxAmountRequired"], v1["payTo"]) == (
        "upto",
        upto.amount,
        SELLER.address,
    )
    assert v1["network"] == "base-sepolia"  # v1 names networks by their legacy names


async def test_the_app_never_runs_for_an_unpaid_request() -> None:
    runs: list[bytes] = []
    async with calling(metered(chat_app(sent=runs), InProcessFacilitator())) as client:
        await client.post(CHAT, json={**QUESTION, "stream": True})
    assert runs == []


@settings(max_examples=20)
@given(prompt=st.text(max_size=400))
async def test_the_maximum_asked_covers_the_prompt_and_max_tokens(prompt: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
    async with calling(metered(chat_app(), InProcessFacilitator(), max_tokens=100)) as client:
        challenge = await client.post(CHAT, json=body)
    assert offered(challenge).amount == str(max_amount(body, max_tokens=100))
    assert challenge.json()["accepts"][0]["maxAmountRequired"] == str(max_amount(body, 100))


async def test_both_schemes_are_offered_when_both_are_configured() -> None:
    facilitator = InProcessFacilitator()
    async with calling(metered(chat_app(), facilitator, schemes=("upto", "exact"))) as client:
        challenge = await client.post(CHAT, json=QUESTION)
    assert offered(challenge, "exact").amount == offered(challenge, "upto").amount
