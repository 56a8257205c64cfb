"""Settle before the response: an ``exact`` answer (by default) is held until its flat charge
settles and says so in ``PAYMENT-RESPONSE``; one that cannot be settled is not sent."""

from __future__ import annotations

import pytest
from x402.http import decode_payment_response_header

from tests.inprocess.facilitator import NETWORK, TRANSACTION, InProcessFacilitator, Refusal
from tests.inprocess.harness import QUESTION, STREAMED, calling, chat_app, metered, pay
from tests.inprocess.harness import receipt_of as receipt
from tests.openai_stream import completion_json, sse_events

pytestmark = pytest.mark.anyio


async def test_an_exact_answer_is_settled_first_and_says_so_in_payment_response() -> None:
    facilitator = InProcessFacilitator()
    async with calling(metered(chat_app(), facilitator, schemes=("exact",))) as client:
        answer = await pay(client, scheme="exact")
        paid = await receipt(client, answer, wait=0)  # final already: settled before sending
    assert answer.status_code == 200
    assert answer.json() == completion_json()
    settled = decode_payment_response_header(answer.headers["payment-response"])
    assert settled.success
    assert (settled.transaction, settled.network) == (TRANSACTION, NETWORK)
    assert (paid["status"], paid["amount"]) == ("settled", settled.amount)
    assert paid["amount"] == paid["max_amount"]  # exact: the flat amount
    assert [s.amount for s in facilitator.settled] == [int(paid["amount"])]


async def test_an_exact_answer_whose_settlement_fails_is_refused_settlement_failed() -> None:
    facilitator = InProcessFacilitator(settle_refusal=Refusal("insufficient_funds"))
    async with calling(metered(chat_app(), facilitator, schemes=("exact",))) as client:
        answer = await pay(client, scheme="exact")
    assert (answer.status_code, answer.json()["reason"]) == (402, "settlement_failed")
    assert "payment-response" not in answer.headers
    assert b"forty" not in answer.content  # the model's answer was not sent


async def test_an_upto_answer_is_served_first_without_payment_response() -> None:
    async with calling(metered(chat_app(), InProcessFacilitator())) as client:
        answer = await pay(client)
    assert answer.status_code == 200
    assert "payment-response" not in answer.headers
    assert "x-payment-receipt" in answer.headers


async def test_an_exact_stream_is_never_held() -> None:
    facilitator = InProcessFacilitator()
    async with calling(metered(chat_app(), facilitator, schemes=("exact",))) as client:
        answer = await pay(client, STREAMED, scheme="exact")
        paid = await receipt(client, answer)
    assert answer.content == b"".join(sse_events(with_usage=False))
    assert "payment-response" not in answer.headers
    assert paid["status"] == "settled"


async def test_settle_before_response_true_holds_an_upto_answer_until_settled() -> None:
    facilitator = InProcessFacilitator()
    meter = metered(chat_app(), facilitator, settle_before_response=True)
    async with calling(meter) as client:
        answer = await pay(client, QUESTION)
    settled = decode_payment_response_header(answer.headers["payment-response"])
    assert [s.amount for s in facilitator.settled] == [int(settled.amount or 0)]


async def test_settle_before_response_false_serves_an_exact_answer_first() -> None:
    facilitator = InProcessFacilitator()
    meter = metered(chat_app(), facilitator, schemes=("exact",), settle_before_response=False)
    async with calling(meter) as client:
        answer = await pay(client, scheme="exact")
        paid = await receipt(client, answer)
    assert answer.status_code == 200
    assert "payment-response" not in answer.headers
    assert paid["status"] == "settled"
