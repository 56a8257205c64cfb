"""A voucher on a channel only this process serves is admitted and charged on the record
as this process left it, with no store read (``RecentChannels``); where another process
writes the channel too, the hint never decides anything: every answer is still charged
exactly once, on the stored record, and a stale hint never refuses a good voucher nor
admits a stale one.

Two meters on one SQLite file stand for two server processes (each its own scheme, its
own hint); the store's reads are counted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.inprocess.facilitator import InProcessFacilitator
from tests.inprocess.harness import QUESTION, calling, chat_app
from tests.inprocess.sessions import ChannelPayer, channel_of, send, session_meter, session_offer
from tests.security.test_sessions import MISMATCH, Counted
from x402_meter import X402Meter
from x402_meter.store import ChannelRecord, ChannelStore, SQLiteStore

pytestmark = pytest.mark.anyio


class CountedReads:
    """A channel store that counts ``get`` calls; once ``lease_before_next_put`` is set, it
    writes a claims worker's lease into the record just before the next ``put`` (which
    then loses its compare-and-set), as a claims pass can at any moment."""

    def __init__(self, store: ChannelStore) -> None:
        self.store = store
        self.reads = 0
        self.lease_before_next_put = False

    async def get(self, channel_id: str) -> ChannelRecord | None:
        self.reads += 1
        return await self.store.get(channel_id)

    async def put(self, record: ChannelRecord) -> ChannelRecord | None:
        if self.lease_before_next_put:
            self.lease_before_next_put = False
            current = await self.store.get(record.channel_id)
            assert current is not None
            await self.store.put(dataclasses.replace(current, claiming="another worker"))
        return await self.store.put(record)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def sqlite_meter(app: Any, facilitator: InProcessFacilitator, path: Path) -> X402Meter:
    from x402_meter.store.channel_sqlite import SQLiteChannelStore

    channels = CountedReads(SQLiteChannelStore(path))
    return session_meter(app, facilitator, store=SQLiteStore(path), channel_store=channels)


def reads(meter: X402Meter) -> int:
    channels = meter.runtime.channels
    assert isinstance(channels, CountedReads)
    return channels.reads


async def pay(client: httpx.AsyncClient, meter: X402Meter, payer: ChannelPayer, req: Any) -> int:
    """One voucher for the channel's charged cumulative plus the maximum; its status."""
    charged = (await channel_of(meter, payer.channel_id(req))).charged
    voucher = payer.voucher(req, charged + int(req.amount))
    return (await send(client, QUESTION, voucher)).status_code


async def test_vouchers_on_a_channel_one_process_serves_are_admitted_and_charged_unread(
    tmp_path: Path,
) -> None:
    facilitator = InProcessFacilitator()
    meter = sqlite_meter(chat_app(), facilitator, tmp_path / "meter.db")
    payer = ChannelPayer()
    async with calling(meter) as client:
        req = await session_offer(client, QUESTION)
        maximum = int(req.amount)
        assert (
            await send(client, QUESTION, payer.deposit(req, maximum, 10 * maximum))
        ).status_code == 200
        assert await pay(client, meter, payer, req) == 200  # read: the hint is confirmed
        before = reads(meter)
        for _ in range(3):
            charged = (await channel_of(meter, payer.channel_id(req))).charged
            answer = await send(client, QUESTION, payer.voucher(req, charged + maximum))
            assert answer.status_code == 200
    assert reads(meter) - before == 3  # the test's own (channel_of): none by the meter
    assert facilitator.calls == ["/verify", "/settle"]


async def test_two_processes_serving_one_channel_in_turn_charge_every_answer_once(
    tmp_path: Path,
) -> None:
    """Vouchers go to A, B, A, B...: each finds its hint stale (the other wrote since), is
    admitted on the stored record, and charged once; replays are refused on both."""
    facilitator = InProcessFacilitator()
    app = Counted(chat_app())
    path = tmp_path / "shared.db"
    first, second = sqlite_meter(app, facilitator, path), sqlite_meter(app, facilitator, path)
    payer = ChannelPayer()
    async with calling(first) as a, calling(second) as b:
        req = await session_offer(a, QUESTION)
        maximum = int(req.amount)
        assert (
            await send(a, QUESTION, payer.deposit(req, maximum, 20 * maximum))
        ).status_code == 200
        one_answer = (await channel_of(first, payer.channel_id(req))).charged
        sent = []
        for turn in range(8):
            client = (b, a)[turn % 2]
            charged = (await channel_of(first, payer.channel_id(req))).charged
            voucher = payer.voucher(req, charged + maximum)
            answer = await send(client, QUESTION, voucher)
            assert answer.status_code == 200, (turn, answer.text)
            sent.append(voucher)
        runs = app.runs
        replays = [await send(client, QUESTION, v) for v in sent for client in (a, b)]
    assert {r.status_code for r in replays} == {402}
    assert {r.json()["reason"] for r in replays} == {MISMATCH}
    assert app.runs == runs == 9
    assert (await channel_of(first, payer.channel_id(req))).charged == 9 * one_answer


async def test_a_claims_lease_written_while_a_voucher_takes_the_channel_is_not_busy(
    tmp_path: Path,
) -> None:
    """The voucher's compare-and-set loses to the claims worker's lease (a write, not a
    request): the voucher reads the channel again and is served, not refused as busy;
    the worker's lease is kept."""
    meter = sqlite_meter(chat_app(), InProcessFacilitator(), tmp_path / "meter.db")
    payer = ChannelPayer()
    channels = meter.runtime.channels
    assert isinstance(channels, CountedReads)
    async with calling(meter) as client:
        req = await session_offer(client, QUESTION)
        maximum = int(req.amount)
        deposit = payer.deposit(req, maximum, 10 * maximum)
        assert (await send(client, QUESTION, deposit)).status_code == 200
        for _ in range(3):  # on a read, then on this process's own record
            channels.lease_before_next_put = True
            assert await pay(client, meter, payer, req) == 200
    record = await channel_of(meter, payer.channel_id(req))
    assert record.claiming == "another worker"
    assert record.serving is None
