"""Refusals: each reason a paid request can be turned away for, with its status, and the app
never running for it."""

from __future__ import annotations

import base64
import json

import pytest

from tests.inprocess.facilitator import InProcessFacilitator, Refusal
from tests.inprocess.harness import (
    CHAT,
    QUESTION,
    calling,
    chat_app,
    header,
    metered,
    offered,
    pay,
    signed,
)
from x402_meter import PriceTable, TokenPrice
from x402_meter.devstack.accounts import PAYERS

pytestmark = pytest.mark.anyio

TABLE = PriceTable({"small": TokenPrice.flat("0.000001"), "large": TokenPrice.flat("0.00001")})


async def test_a_payment_header_that_is_not_a_payload_is_invalid_payload() -> None:
    runs: list[bytes] = []
    facilitator = InProcessFacilitator()
    async with calling(metered(chat_app(sent=runs), facilitator)) as client:
        garbage = base64.b64encode(b'{"x402Version": 2, "payload": 7}').decode()
        answer = await client.post(
            CHAT, json={**QUESTION, "stream": True}, headers={"payment-signature": garbage}
        )
    assert (answer.status_code, answer.json()["reason"]) == (400, "invalid_payload")
    assert facilitator.verified == []
    assert runs == []


async def test_a_payload_missing_its_signature_is_invalid_payload_naming_the_field() -> None:
    facilitator = InProcessFacilitator()
    async with calling(metered(chat_app(), facilitator)) as client:
        challenge = await client.post(CHAT, json=QUESTION)
        payload = (await signed(offered(challenge))).model_dump(by_alias=True, mode="json")
        del payload["payload"]["signature"]
        sent = base64.b64encode(json.dumps(payload).encode()).decode()
        answer = await client.post(CHAT, json=QUESTION, headers={"payment-signature": sent})
    assert (answer.status_code, answer.json()["reason"]) == (400, "invalid_payload")
    assert "signature" in answer.json()["error"]
    assert facilitator.verified == []


async def test_a_payment_for_less_than_the_maximum_is_amount_too_low() -> None:
    facilitator = InProcessFacilitator()
    async with calling(metered(chat_app(), facilitator)) as client:
        challenge = await client.post(CHAT, json=QUESTION)
        cheaper = offered(challenge).model_copy(update={"amount": "1"})
        answer = await client.post(CHAT, json=QUESTION, headers=header(await signed(cheaper)))
    assert (answer.status_code, answer.json()["reason"]) == (402, "amount_too_low")
    assert "payment-required" in answer.headers  # the offer again, to pay it right
    assert facilitator.verified == []


async def test_a_payment_to_another_payee_is_pay_to_mismatch() -> None:
    facilitator = InProcessFacilitator()
    async with calling(metered(chat_app(), facilitator)) as client:
        answer = await pay(client, pay_to=PAYERS[5].address)
    assert (answer.status_code, answer.json()["reason"]) == (402, "pay_to_mismatch")
    assert facilitator.verified == []


async def test_a_payment_sent_twice_is_payment_already_used_the_second_time() -> None:
    facilitator = InProcessFacilitator()
    async with calling(metered(chat_app(), facilitator)) as client:
        challenge = await client.post(CHAT, json=QUESTION)
        payment = header(await signed(offered(challenge)))
        first = await client.post(CHAT, json=QUESTION, headers=payment)
        replay = await client.post(CHAT, json=QUESTION, headers=payment)
    assert first.status_code == 200
    assert (replay.status_code, replay.json()["reason"]) == (402, "payment_already_used")
    assert len(facilitator.verified) == 1
    assert len(facilitator.settled) == 1


async def test_a_payment_valid_for_less_than_the_expiry_margin_is_payment_expires_too_soon() -> (
    None
):
    facilitator = InProcessFacilitator()
    async with calling(metered(chat_app(), facilitator, expiry_margin=60)) as client:
        answer = await pay(client, max_timeout_seconds=30)  # the permit's deadline: now + 30
    assert (answer.status_code, answer.json()["reason"]) == (402, "payment_expires_too_soon")
    assert facilitator.verified == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"messages": []}, "model_required"),
        ({"model": "huge", "messages": []}, "unknown_model"),
    ],
)
async def test_a_price_table_refuses_a_body_it_cannot_price_and_lists_its_models(
    body: dict[str, object], reason: str
) -> None:
    async with calling(metered(chat_app(), InProcessFacilitator(), price_per_token=TABLE)) as c:
        answer = await c.post(CHAT, json=body)
    assert (answer.status_code, answer.json()["reason"]) == (400, reason)
    assert answer.json()["models"] == ["large", "small"]


async def test_a_body_over_max_request_body_is_request_too_large() -> None:
    big = {**QUESTION, "messages": [{"role": "user", "content": "x" * 5000}]}
    async with calling(metered(chat_app(), InProcessFacilitator(), max_request_body=1000)) as c:
        answer = await c.post(CHAT, json=big)
    assert (answer.status_code, answer.json()["reason"]) == (413, "request_too_large")


async def test_a_facilitator_down_at_verify_is_a_503_with_retry_after_and_frees_the_payment() -> (
    None
):
    facilitator = InProcessFacilitator()
    async with calling(metered(chat_app(), facilitator, retry_after_seconds=7)) as client:
        challenge = await client.post(CHAT, json=QUESTION)
        payment = header(await signed(offered(challenge)))
        facilitator.unreachable = True
        down = await client.post(CHAT, json=QUESTION, headers=payment)
        facilitator.unreachable = False
        again = await client.post(CHAT, json=QUESTION, headers=payment)
    assert (down.status_code, down.json()["reason"]) == (503, "facilitator_unavailable")
    assert down.headers["retry-after"] == "7"
    assert again.status_code == 200  # never used, so the same payment is good for a retry


async def test_a_facilitator_down_before_any_offer_is_a_503_not_a_free_answer() -> None:
    runs: list[bytes] = []
    facilitator = InProcessFacilitator(unreachable=True)
    async with calling(metered(chat_app(sent=runs), facilitator)) as client:
        answer = await client.post(CHAT, json={**QUESTION, "stream": True})
    assert (answer.status_code, answer.json()["reason"]) == (503, "facilitator_unavailable")
    assert "retry-after" in answer.headers
    assert runs == []


async def test_the_facilitators_invalid_reason_is_passed_on_and_the_payment_freed() -> None:
    facilitator = InProcessFacilitator(verify_refusal=Refusal("invalid_scheme", "bad permit"))
    async with calling(metered(chat_app(), facilitator)) as client:
        challenge = await client.post(CHAT, json=QUESTION)
        payment = header(await signed(offered(challenge)))
        refused = await client.post(CHAT, json=QUESTION, headers=payment)
        facilitator.verify_refusal = None
        again = await client.post(CHAT, json=QUESTION, headers=payment)
    assert refused.status_code == 402
    assert (refused.json()["reason"], refused.json()["error"]) == ("invalid_scheme", "bad permit")
    assert "payment-required" in refused.headers
    assert again.status_code == 200
    assert len(facilitator.settled) == 1


async def test_a_wallet_without_a_permit2_allowance_gets_a_412() -> None:
    refusal = Refusal("permit2_allowance_required", "approve Permit2 first")
    facilitator = InProcessFacilitator(verify_refusal=refusal)
    async with calling(metered(chat_app(), facilitator)) as client:
        answer = await pay(client)
    assert (answer.status_code, answer.json()["reason"]) == (412, "permit2_allowance_required")
    assert "payment-required" in answer.headers
    assert facilitator.settled == []
