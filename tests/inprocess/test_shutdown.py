"""Shutting down waits for the answers still being served, then for their settlements: a
charge made while the server shuts down settles before the process exits, not at its next
start."""

from __future__ import annotations

import anyio
import pytest

from tests.inprocess.facilitator import InProcessFacilitator
from tests.inprocess.harness import WaitingApp, calling, metered, paid_stream, receipt_of

pytestmark = pytest.mark.anyio


async def test_shutdown_waits_for_an_answer_still_streaming_and_settles_its_charge() -> None:
    facilitator, app = InProcessFacilitator(), WaitingApp()
    meter = metered(app, facilitator, recheck_every=0)
    settled_at_close: list[int] = []
    closed = anyio.Event()

    async def close() -> None:
        await meter.runtime.settler.aclose()
        settled_at_close.extend(s.amount for s in facilitator.settled)
        closed.set()

    async with calling(meter) as client, anyio.create_task_group() as tasks:

        async def shut_down_while_streaming() -> None:
            tasks.start_soon(close)
            await anyio.wait_all_tasks_blocked()  # the shutdown has begun and got stuck (or not)
            app.finish.set()  # only then does the answer complete

        answer = await paid_stream(client, app, shut_down_while_streaming)
        await closed.wait()
        paid = await receipt_of(client, answer, wait=0)

    assert paid["status"] == "settled"
    assert settled_at_close == [int(paid["amount"])]
