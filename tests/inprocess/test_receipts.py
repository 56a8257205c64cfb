"""Receipts: pending while the charge settles, then settled, failed or not charged, with the
amounts in atomic units and in the asset's units."""

from __future__ import annotations

from decimal import Decimal

import anyio
import pytest

from tests.apps import PRICE_ATOMIC
from tests.inprocess.facilitator import TRANSACTION, InProcessFacilitator, Refusal
from tests.inprocess.harness import PAYER, STREAMED, calling, chat_app, metered, offered, pay
from tests.inprocess.harness import receipt_of as receipt
from tests.openai_stream import COMPLETION_TOKENS, PROMPT_TOKENS

pytestmark = pytest.mark.anyio

CHARGE = (PROMPT_TOKENS + COMPLETION_TOKENS) * PRICE_ATOMIC
"""What the app's answer costs: it reports its usage."""


async def test_a_receipt_is_pending_until_the_charge_settles_then_settled() -> None:
    facilitator = InProcessFacilitator(settle_gate=anyio.Event())
    async with calling(metered(chat_app(), facilitator)) as client:
        answer = await pay(client)
        await facilitator.settle_started.wait()
        pending = await receipt(client, answer, wait=0)
        assert facilitator.settle_gate is not None
        facilitator.settle_gate.set()
        settled = await receipt(client, answer)
    assert answer.status_code == 200
    assert (pending["status"], pending["amount"], pending["transaction"]) == (
        "pending",
        str(CHARGE),
        None,
    )
    assert (settled["status"], settled["transaction"]) == ("settled", TRANSACTION)
    assert (settled["input_tokens"], settled["output_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert settled["usage_source"] == "reported"
    assert (settled["amount"], settled["amount_units"]) == (str(CHARGE), "0.000346")
    assert settled["payer"] == PAYER.address.lower()
    assert [s.amount for s in facilitator.settled] == [CHARGE]


async def test_a_receipt_shows_the_maximum_authorized_beside_the_amount() -> None:
    async with calling(metered(chat_app(), InProcessFacilitator())) as client:
        challenge = await client.post("/v1/chat/completions", json=STREAMED)
        maximum = offered(challenge).amount
        answer = await pay(client, STREAMED)
        paid = await receipt(client, answer)
    assert paid["max_amount"] == maximum
    assert paid["max_amount_units"] == f"{Decimal(maximum).scaleb(-6):.6f}"
    assert paid["usage_source"] == "estimated"  # the stream reported no usage
    assert 0 < int(paid["amount"]) < int(maximum)


async def test_a_charge_the_facilitator_refuses_has_a_failed_receipt_with_its_reason() -> None:
    facilitator = InProcessFacilitator(settle_refusal=Refusal("insufficient_funds"))
    async with calling(metered(chat_app(), facilitator)) as client:
        answer = await pay(client)
        failed = await receipt(client, answer)
    assert answer.status_code == 200  # upto serves first: the answer was already sent
    assert (failed["status"], failed["amount"], failed["transaction"]) == (
        "failed",
        str(CHARGE),
        None,
    )
    assert "insufficient_funds" in failed["error"]


async def test_an_answer_the_app_failed_is_not_charged() -> None:
    facilitator = InProcessFacilitator()
    async with calling(metered(chat_app(status=500), facilitator)) as client:
        answer = await pay(client)
        paid = await receipt(client, answer)
    assert answer.status_code == 500
    assert (paid["status"], paid["amount"], paid["amount_units"]) == (
        "not_charged",
        "0",
        "0.000000",
    )
    assert facilitator.settled == []


async def test_an_unknown_receipt_is_a_404_with_a_reason() -> None:
    async with calling(metered(chat_app(), InProcessFacilitator())) as client:
        answer = await client.get("/x402/receipts/" + "A" * 24)
    assert (answer.status_code, answer.json()["reason"]) == (404, "receipt_not_found")
