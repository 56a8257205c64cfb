"""Price plans by model: each model's own cover (``max_tokens``) and price per request."""

from __future__ import annotations

import pytest

from tests.inprocess.facilitator import InProcessFacilitator
from tests.inprocess.harness import (
    CHAT,
    QUESTION,
    calling,
    chat_app,
    metered,
    offered,
    pay,
    receipt_of,
)
from tests.openai_stream import COMPLETION_TOKENS, PROMPT_TOKENS
from x402_meter import PriceTable, TokenPrice

pytestmark = pytest.mark.anyio

PLANS = PriceTable(
    {
        "short": TokenPrice("0", "0.000001", max_tokens=100),
        "long": TokenPrice("0", "0.000001", max_tokens=1000),
        "flat": TokenPrice("0", "0", per_request="0.0025"),
        "both": TokenPrice("0", "0.000001", per_request="0.001", max_tokens=10),
    }
)


async def test_each_model_is_asked_to_cover_its_own_max_tokens() -> None:
    async with calling(metered(chat_app(), InProcessFacilitator(), price_per_token=PLANS)) as c:
        short = await c.post(CHAT, json={**QUESTION, "model": "short"})
        long = await c.post(CHAT, json={**QUESTION, "model": "long"})
    assert (offered(short).amount, offered(long).amount) == ("100", "1000")


async def test_a_price_per_request_is_asked_for_on_top_of_the_tokens() -> None:
    async with calling(metered(chat_app(), InProcessFacilitator(), price_per_token=PLANS)) as c:
        flat = await c.post(CHAT, json={**QUESTION, "model": "flat"})
        both = await c.post(CHAT, json={**QUESTION, "model": "both"})
    assert (offered(flat).amount, offered(both).amount) == ("2500", "1010")


async def test_a_flat_plan_charges_its_price_per_request_for_an_answer_served() -> None:
    async with calling(metered(chat_app(), InProcessFacilitator(), price_per_token=PLANS)) as c:
        answer = await pay(c, {**QUESTION, "model": "flat"})
        receipt = await receipt_of(c, answer)
    assert answer.status_code == 200
    assert (receipt["status"], receipt["amount"]) == ("settled", "2500")
    assert (receipt["input_tokens"], receipt["output_tokens"]) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )


async def test_a_failed_answer_is_not_charged_its_price_per_request() -> None:
    meter = metered(chat_app(status=502), InProcessFacilitator(), price_per_token=PLANS)
    async with calling(meter) as c:
        answer = await pay(c, {**QUESTION, "model": "flat"})
        receipt = await receipt_of(c, answer)
    assert answer.status_code == 502
    assert (receipt["status"], receipt["amount"]) == ("not_charged", "0")
