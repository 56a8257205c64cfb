"""Caps: a stream whose count reaches the authorized maximum is ended there (``on_cap="end"``)
or let finish (``"finish"``); either way the charge is the maximum, never more."""

from __future__ import annotations

import pytest

from tests.apps import max_amount
from tests.inprocess.facilitator import InProcessFacilitator
from tests.inprocess.harness import STREAMED, calling, chat_app, metered, pay
from tests.inprocess.harness import receipt_of as receipt
from tests.openai_stream import PIECES, sse_events

pytestmark = pytest.mark.anyio

LONG = PIECES * 200
"""Far more output than 50 tokens: the stream reaches the maximum long before its end."""
FULL = list(sse_events(LONG, with_usage=False))


async def test_on_cap_end_ends_a_stream_at_the_maximum_and_charges_the_maximum() -> None:
    sent: list[bytes] = []
    facilitator = InProcessFacilitator()
    meter = metered(chat_app(pieces=LONG, sent=sent), facilitator, max_tokens=50, on_cap="end")
    # The app's next send raises StreamCapped (an OSError, as a client gone away); the app
    # lets it out, and a server ends the answer there.
    async with calling(meter, as_a_server=True) as client:
        answer = await pay(client, STREAMED)
        paid = await receipt(client, answer)
    maximum = max_amount(STREAMED, max_tokens=50)
    assert answer.status_code == 200
    assert len(sent) < len(FULL)  # the app was stopped
    assert not answer.content.endswith(b"data: [DONE]\n\n")
    assert paid["amount"] == paid["max_amount"] == str(maximum)
    assert [s.amount for s in facilitator.settled] == [maximum]


async def test_on_cap_finish_lets_the_stream_finish_and_charges_only_the_maximum() -> None:
    sent: list[bytes] = []
    facilitator = InProcessFacilitator()
    meter = metered(chat_app(pieces=LONG, sent=sent), facilitator, max_tokens=50, on_cap="finish")
    async with calling(meter) as client:
        answer = await pay(client, STREAMED)
        paid = await receipt(client, answer)
    maximum = max_amount(STREAMED, max_tokens=50)
    assert answer.content == b"".join(FULL)
    assert sent == FULL
    assert paid["amount"] == paid["max_amount"] == str(maximum)
    assert int(paid["output_tokens"]) > 50  # counted beyond the cap, charged at it
    assert [s.amount for s in facilitator.settled] == [maximum]


async def test_a_stream_under_the_maximum_is_charged_its_count() -> None:
    facilitator = InProcessFacilitator()
    async with calling(metered(chat_app(), facilitator, on_cap="end")) as client:
        answer = await pay(client, STREAMED)
        paid = await receipt(client, answer)
    assert answer.content == b"".join(sse_events(with_usage=False))
    assert 0 < int(paid["amount"]) < int(paid["max_amount"])
    assert [s.amount for s in facilitator.settled] == [int(paid["amount"])]
