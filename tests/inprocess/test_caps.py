"""Caps: a stream whose count reaches the authorized maximum is ended there (``on_cap="end"``)
or let finish (``"finish"``); either way the charge is the maximum, never more. An answer
ended at the cap ends quietly: the body is closed on the chunk that reached it, the app is
stopped, and no exception reaches the server (tests/test_cap_in_a_server.py: in uvicorn)."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from starlette.types import Message

from tests.apps import max_amount
from tests.inprocess.facilitator import InProcessFacilitator
from tests.inprocess.harness import HANG, STREAMED, App, calling, chat_app, metered, pay
from tests.inprocess.harness import receipt_of as receipt
from tests.openai_stream import PIECES, sse_events
from x402_meter import StreamCapped

pytestmark = pytest.mark.anyio

LONG = PIECES * 200
"""Far more output than 50 tokens: the stream reaches the maximum long before its end."""
FULL = list(sse_events(LONG, with_usage=False))
SSE = [(b"content-type", b"text/event-stream")]
MAXIMUM = max_amount(STREAMED, max_tokens=50)
"""What a request authorizes with ``max_tokens=50``: reached long before ``LONG`` ends."""


def answers(messages: list[Message]) -> list[list[Message]]:
    """The messages a server got, one list per answer (each from its start on)."""
    split: list[list[Message]] = []
    for message in messages:
        if message["type"] == "http.response.start":
            split.append([])
        split[-1].append(message)
    return split


async def test_on_cap_end_closes_the_body_at_the_cap_stops_the_app_and_charges_the_maximum() -> (
    None
):
    sent: list[bytes] = []
    facilitator = InProcessFacilitator()
    app = chat_app(pieces=LONG, sent=sent)
    messages: list[Message] = []
    meter = metered(app, facilitator, max_tokens=50, on_cap="end")
    async with calling(meter, sent=messages) as client:  # an exception let out would fail it
        answer = await pay(client, STREAMED)
        paid = await receipt(client, answer)
    _challenge, (_start, *bodies), _receipt = answers(messages)
    assert answer.status_code == 200
    assert bodies[-1]["more_body"] is False  # closed on the chunk that reached the cap
    assert bodies[-1]["body"]
    assert all(m["more_body"] for m in bodies[:-1])
    assert answer.content == b"".join(FULL[: len(bodies)])  # whole events, none past the cap
    assert len(sent) < len(FULL)  # the app was stopped
    assert paid["amount"] == paid["max_amount"] == str(MAXIMUM)
    assert int(paid["output_tokens"]) >= 50
    assert [s.amount for s in facilitator.settled] == [MAXIMUM]


async def capped(app: App) -> tuple[httpx.Response, Any, InProcessFacilitator]:
    """``app`` metered with ``max_tokens=50`` and ``on_cap="end"``, paid for once: its
    answer, the answer's receipt, and the facilitator."""
    facilitator = InProcessFacilitator()
    meter = metered(app, facilitator, max_tokens=50, on_cap="end")
    async with calling(meter) as client:
        with anyio.fail_after(HANG):  # a guard against a hang, not a timing assertion
            answer = await pay(client, STREAMED)
        paid = await receipt(client, answer)
    return answer, paid, facilitator


async def test_an_app_that_swallows_stream_capped_gets_it_again_sends_nothing_and_is_stopped() -> (
    None
):
    refused: list[StreamCapped] = []
    stopped: list[str] = []

    async def stubborn(scope: Any, receive: Any, send: Any) -> None:
        """Sends on after ``StreamCapped``, then waits (for an upstream that never comes)."""
        start = {"type": "http.response.start", "status": 200, "headers": SSE}
        await send(start)
        for event in FULL:
            try:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            except StreamCapped as exc:
                refused.append(exc)
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            stopped.append("cancelled")
            raise

    answer, paid, facilitator = await capped(stubborn)
    delivered = len(FULL) - len(refused)
    assert 0 < len(refused) < len(FULL)  # every send after the cap refused, again and again
    assert answer.content == b"".join(FULL[:delivered])  # not a byte past the cap
    assert stopped == ["cancelled"]
    assert paid["amount"] == str(MAXIMUM)
    assert [s.amount for s in facilitator.settled] == [MAXIMUM]


async def test_an_app_that_waits_between_chunks_is_stopped_at_the_cap_without_an_error() -> None:
    sent: list[bytes] = []
    stopped: list[str] = []

    async def paced(scope: Any, receive: Any, send: Any) -> None:
        """Waits for its upstream before each chunk: it is waiting, not sending, at the cap."""
        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        try:
            for event in FULL:
                await anyio.lowlevel.checkpoint()  # the upstream's next token
                sent.append(event)
                await send({"type": "http.response.body", "body": event, "more_body": True})
        except anyio.get_cancelled_exc_class():
            stopped.append("cancelled")
            raise

    answer, paid, _ = await capped(paced)
    assert stopped == ["cancelled"]  # at its wait: it never sent again
    assert answer.content == b"".join(sent)
    assert len(sent) < len(FULL)
    assert paid["amount"] == str(MAXIMUM)


async def test_on_cap_finish_lets_the_stream_finish_and_charges_only_the_maximum() -> None:
    sent: list[bytes] = []
    facilitator = InProcessFacilitator()
    meter = metered(chat_app(pieces=LONG, sent=sent), facilitator, max_tokens=50, on_cap="finish")
    async with calling(meter) as client:
        answer = await pay(client, STREAMED)
        paid = await receipt(client, answer)
    assert answer.content == b"".join(FULL)
    assert sent == FULL
    assert paid["amount"] == paid["max_amount"] == str(MAXIMUM)
    assert int(paid["output_tokens"]) > 50  # counted beyond the cap, charged at it
    assert [s.amount for s in facilitator.settled] == [MAXIMUM]


async def test_a_stream_under_the_maximum_is_charged_its_count() -> None:
    facilitator = InProcessFacilitator()
    async with calling(metered(chat_app(), facilitator, on_cap="end")) as client:
        answer = await pay(client, STREAMED)
        paid = await receipt(client, answer)
    assert answer.content == b"".join(sse_events(with_usage=False))
    assert 0 < int(paid["amount"]) < int(paid["max_amount"])
    assert [s.amount for s in facilitator.settled] == [int(paid["amount"])]


async def test_an_app_that_fails_for_its_own_reason_after_the_cap_is_not_hidden() -> None:
    class AppOwnError(Exception):
        pass

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        refused = False
        for event in FULL:
            try:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            except StreamCapped:
                refused = True
                break
        if refused:  # not while handling StreamCapped: a failure of its own
            raise AppOwnError("the app's own failure, after its answer was capped")

    facilitator = InProcessFacilitator()
    meter = metered(failing, facilitator, max_tokens=50, on_cap="end")
    async with calling(meter) as client:
        with pytest.raises(AppOwnError):  # the server hears of it, as of any failure of the app
            await pay(client, STREAMED)
    assert [s.amount for s in facilitator.settled] == [MAXIMUM]
