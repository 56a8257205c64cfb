"""Sessions under faults and concurrency, with real processes: a server killed with SIGKILL
mid-stream and restarted, two requests at once on one channel (in one process and across
two), and a pair of servers sharing one channel through Redis.

Everything is real: the payer is the official SDK's batch-settlement client in the SDK's
httpx client (a new funded account each test), X402Meter in uvicorn processes
(``tests/fault_app.py``) sharing a SQLite file or a Redis server, the bundled facilitator
over HTTP, the contracts on anvil. Charges are read from the receipts and the channel
store, claims are made by the servers' own claims workers (``POST /claims`` runs a pass),
and what was claimed is read from the chain.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import anyio
import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402.http import decode_payment_required_header
from x402.http.clients import x402HttpxClient
from x402.http.utils import encode_payment_signature_header

from tests.channel_seller import payer_client, payer_scheme
from tests.examples.conftest import new_funded_payer
from tests.fault_harness import Server, uvicorn_server
from tests.test_channels_sdk import contracts, facilitator_transactions
from tests.test_faults import CHAT, PRICE_ATOMIC, settled_receipt
from tests.test_sessions_sdk import sdk_channel
from x402_meter.devstack import LocalStack
from x402_meter.metering import ResponseInfo, auto_meter
from x402_meter.store import ChannelRecord, channel_store_beside, open_store

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

BUSY: Final = "invalid_batch_settlement_evm_channel_busy"
MISMATCH: Final = "invalid_batch_settlement_evm_cumulative_amount_mismatch"
QUIET_CLAIMS: Final = {"session_withdraw_delay": 86_400, "session_claim_interval": 40_000.0}
"""The claims workers pass at their start and when a test asks (``POST /claims``) only."""


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path


def session_options(pay_to: str) -> dict[str, Any]:
    """The fault app's meter offering sessions, paying a fresh ``pay_to``."""
    return {"schemes": ["upto", "batch-settlement"], "pay_to": pay_to, **QUIET_CLAIMS}


def chat(server: Server, hold_after: int | None = None) -> str:
    query = "" if hold_after is None else f"?hold_after={hold_after}"
    return f"{server.url}/v1/chat/completions{query}"


@asynccontextmanager
async def sdk_payer(stack: LocalStack, payer: LocalAccount) -> AsyncIterator[httpx.AsyncClient]:
    """The official SDK client paying sessions as ``payer``."""
    async with x402HttpxClient(payer_client(stack, payer_scheme(stack, payer)), timeout=60) as http:
        yield http


async def paid(http: httpx.AsyncClient, server: Server) -> str:
    """One whole streamed answer paid on ``server``; its receipt's path."""
    answer = await http.post(chat(server), json=CHAT)
    assert answer.status_code == 200, answer.text
    assert answer.text.endswith("data: [DONE]\n\n")
    return answer.headers["x-payment-receipt"]


async def held_open(http: httpx.AsyncClient, server: Server, chunks: int) -> httpx.Response:
    """A paid streamed answer that ``server`` holds after ``chunks`` chunks (until
    ``POST /release``), its body not yet read: the channel is held while it lasts."""
    request = http.build_request("POST", chat(server, hold_after=chunks), json=CHAT)
    response = await http.send(request, stream=True)
    assert response.status_code == 200, await response.aread()
    return response


async def claim(http: httpx.AsyncClient, server: Server) -> dict[str, Any]:
    """A pass of ``server``'s claims worker, now."""
    answer = await http.post(f"{server.url}/claims")
    assert answer.status_code == 200, answer.text
    report: dict[str, Any] = answer.json()
    assert report["interrupted"] is None, report
    assert report["refused"] == {}, report
    return report


async def the_channel(store_url: str, payer: LocalAccount) -> ChannelRecord:
    """``payer``'s one channel, as the servers' shared store has it."""
    store = open_store(store_url)
    channels = channel_store_beside(store)
    try:
        records = [r for r in await channels.list(limit=1000) if r.payer == payer.address.lower()]
    finally:
        await channels.aclose()
        await store.aclose()
    (record,) = records
    return record


def claimed_on_chain(stack: LocalStack, record: ChannelRecord) -> int:
    return contracts(stack).channel(sdk_channel(record).channel_config).total_claimed


def cost(receipt: dict[str, Any]) -> int:
    return (int(receipt["input_tokens"]) + int(receipt["output_tokens"])) * PRICE_ATOMIC


def output_tokens_in(received: bytes) -> int:
    """The output tokens in what a client received of a streamed answer, counted as the
    meter counts (with no usage reported, the text that went out)."""
    meter = auto_meter(
        ResponseInfo(200, "text/event-stream", None, json.dumps(CHAT).encode(), "/v1/chat")
    )
    meter.feed(received)
    return meter.finish().output_tokens


async def receipts_of(url: str, paths: list[str]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=120) as plain:
        return [await settled_receipt(plain, url, path) for path in paths]


# -- 1. kill -9 mid-stream, then restart ------------------------------------------------------


async def test_a_server_killed_mid_stream_charges_what_it_served_and_its_successor_claims_it(
    x402_local_stack: LocalStack, logs: Path
) -> None:
    """The SDK client opens a channel (one deposit) and pays a second answer by voucher; the
    server is killed (SIGKILL: no cleanup runs) after six chunks of it. A server restarted
    on the same SQLite file recovers the dead answer's row from its last checkpoint: the
    channel is charged exactly what the client received, and is free again. The next
    voucher is admitted (after the spec's corrective 402), and the restarted server's
    claims worker claims the channel: on chain, totalClaimed is the sum of the receipts."""
    stack = x402_local_stack
    payer, pay_to = new_funded_payer(stack), Account.create().address
    store = f"sqlite:///{logs}/ledger.db"
    options = session_options(pay_to)
    async with sdk_payer(stack, payer) as http:
        with uvicorn_server(stack, store, logs / "first.log", meter_options=options) as first:
            receipts = [await paid(http, first)]  # the deposit
            dead, received = await killed_after_six_chunks(http, first)

        with uvicorn_server(stack, store, logs / "second.log", meter_options=options) as second:
            recovered = (await receipts_of(second.url, [dead]))[0]  # its sweeper took the row
            assert (await the_channel(store, payer)).serving is None
            receipts.append(await paid(http, second))  # the channel serves again
            report = await claim(http, second)
            outcomes = await receipts_of(second.url, receipts)
            channel = await the_channel(store, payer)

    check_recovered(recovered, received)
    check_claimed(stack, channel, report, pay_to, [*outcomes, recovered])


async def test_a_server_killed_mid_stream_is_charged_and_claimed_by_the_other_on_redis(
    x402_local_stack: LocalStack, redis_url: str, logs: Path
) -> None:
    """Two servers on one Redis; the one serving the answer is killed after six chunks.
    The other one, still running, recovers the dead answer's row once its lease runs out,
    charges what the client received, serves the next voucher and claims the channel."""
    stack = x402_local_stack
    payer, pay_to = new_funded_payer(stack), Account.create().address
    options = session_options(pay_to)
    async with sdk_payer(stack, payer) as http:
        with uvicorn_server(stack, redis_url, logs / "b.log", meter_options=options) as other:
            with uvicorn_server(stack, redis_url, logs / "a.log", meter_options=options) as a:
                receipts = [await paid(http, a)]  # the deposit
                dead, received = await killed_after_six_chunks(http, a)
            recovered = (await receipts_of(other.url, [dead]))[0]  # its sweeper took the row
            assert (await the_channel(redis_url, payer)).serving is None
            receipts.append(await paid(http, other))
            report = await claim(http, other)
            outcomes = await receipts_of(other.url, receipts)
            channel = await the_channel(redis_url, payer)

    check_recovered(recovered, received)
    check_claimed(stack, channel, report, pay_to, [*outcomes, recovered])


async def killed_after_six_chunks(http: httpx.AsyncClient, server: Server) -> tuple[str, bytes]:
    """A paid answer on ``server``, which is killed (SIGKILL: no cleanup code runs) once
    the client has its first six chunks; the answer's receipt path and what it received."""
    response = await held_open(http, server, chunks=6)
    received = b""
    async for chunk in response.aiter_raw():  # the role chunk and five pieces
        received += chunk
        if received.count(b"\n\n") == 6:
            break
    os.kill(server.process.pid, signal.SIGKILL)
    await response.aclose()
    return response.headers["x-payment-receipt"], received


def check_recovered(recovered: dict[str, Any], received: bytes) -> None:
    """The dead answer was charged what the client received: never more (+1 unit of
    rounding at most), and here exactly (a checkpoint before every chunk)."""
    served = (int(recovered["input_tokens"]) + output_tokens_in(received)) * PRICE_ATOMIC
    assert recovered["status"] == "settled"
    assert 0 < int(recovered["amount"]) <= served + 1
    assert int(recovered["amount"]) == cost(recovered) == served


def check_claimed(
    stack: LocalStack,
    channel: ChannelRecord,
    report: dict[str, Any],
    pay_to: str,
    receipts: list[dict[str, Any]],
) -> None:
    """The channel charged the receipts' sum, claimed once for it by the pass ``report``
    says, on chain too, and swept to ``pay_to``."""
    total = sum(int(r["amount"]) for r in receipts)
    assert channel.charged == total
    assert [c["totals"] for c in report["claims"]] == [{channel.channel_id: str(total)}]
    assert claimed_on_chain(stack, channel) == total
    assert channel.claimed == total
    assert len(report["sweeps"]) == 1
    assert contracts(stack).token_balance(pay_to) == total


# -- 2. two requests at once on one channel --------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2])
async def test_of_two_requests_at_once_on_one_channel_one_is_served_one_refused_none_lost(
    x402_local_stack: LocalStack, logs: Path, processes: int
) -> None:
    """While an answer streams on the channel, the same client's second request (on the
    same server, or on a second one sharing the SQLite file) is refused as busy: the app
    never runs for it, and its voucher counts for nothing. The first answer is charged,
    and that charge is claimed on chain."""
    stack = x402_local_stack
    payer, pay_to = new_funded_payer(stack), Account.create().address
    store = f"sqlite:///{logs}/ledger.db"
    options = session_options(pay_to)
    with (
        uvicorn_server(stack, store, logs / "a.log", meter_options=options) as a,
        uvicorn_server(stack, store, logs / "b.log", meter_options=options) as b,
    ):
        other = a if processes == 1 else b
        async with sdk_payer(stack, payer) as http:
            receipts = [await paid(http, a)]  # the deposit
            runs_before = (await http.get(f"{other.url}/runs")).json()["runs"]
            first = await held_open(http, a, chunks=3)
            receipts.append(first.headers["x-payment-receipt"])
            during = await the_channel(store, payer)
            second = await http.post(chat(other), json=CHAT)
            await http.post(f"{a.url}/release")
            body = await first.aread()
            runs_after = (await http.get(f"{other.url}/runs")).json()["runs"]
            outcomes = await receipts_of(a.url, receipts)
            after = await the_channel(store, payer)
            again = await paid(http, other)  # the channel is free: the next one is served
            outcomes += await receipts_of(other.url, [again])
            report = await claim(http, other)
            channel = await the_channel(store, payer)

    assert second.status_code == 402
    assert second.json()["reason"] == BUSY
    assert runs_after == runs_before + (1 if processes == 1 else 0)  # only the first ran
    assert body.endswith(b"data: [DONE]\n\n")
    charges = [int(o["amount"]) for o in outcomes]
    assert all(charges)
    assert after.charged == during.charged + charges[1]  # the refused voucher: nothing
    assert after.serving is None
    assert channel.charged == sum(charges)
    assert [c["totals"] for c in report["claims"]] == [{channel.channel_id: str(sum(charges))}]
    assert claimed_on_chain(stack, channel) == sum(charges)


async def test_a_client_that_read_an_answer_to_its_end_pays_the_next_at_once_on_another_server(
    x402_local_stack: LocalStack, logs: Path
) -> None:
    """Two servers sharing the SQLite file. Each time the client has read a streamed answer
    to its end on one, it sends a voucher straight to the other (signed beforehand):
    the channel is never busy there (the end of an answer leaves only once it is charged).
    The voucher gets the spec's corrective 402 (the SDK client does not know a streamed
    answer's charge), never ``channel_busy``."""
    stack = x402_local_stack
    payer, pay_to = new_funded_payer(stack), Account.create().address
    store = f"sqlite:///{logs}/ledger.db"
    options = session_options(pay_to)
    payments = payer_client(stack, payer_scheme(stack, payer))
    reasons: list[str] = []
    with (
        uvicorn_server(stack, store, logs / "a.log", meter_options=options) as a,
        uvicorn_server(stack, store, logs / "b.log", meter_options=options) as b,
    ):
        async with (
            x402HttpxClient(payments, timeout=60) as http,
            httpx.AsyncClient(timeout=60) as plain,
        ):
            await paid(http, a)  # the deposit
            challenge = await plain.post(chat(b), json=CHAT)
            offers = decode_payment_required_header(challenge.headers["payment-required"])
            sessions = offers.model_copy(
                update={"accepts": [o for o in offers.accepts if o.scheme == "batch-settlement"]}
            )
            for server, other in [(a, b), (b, a), (a, b), (b, a), (a, b), (b, a)]:
                # Signed before (the SDK client's state is that of the answer before): the
                # voucher leaves the moment the answer has ended.
                payload = await payments.create_payment_payload(sessions)
                header = {"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)}
                await paid(http, server)
                refused = await plain.post(chat(other), json=CHAT, headers=header)
                assert refused.status_code == 402, refused.text
                reasons.append(refused.json()["reason"])
    assert reasons == [MISMATCH] * 6


# -- 3. two servers, one channel, one Redis ---------------------------------------------------


async def test_two_servers_sharing_redis_serve_one_session_in_turns_and_claim_it_once(
    x402_local_stack: LocalStack, redis_url: str, logs: Path
) -> None:
    """The deposit on A, then vouchers on B, A, B, A, B: every answer served and charged
    once, each server admitting vouchers on what the other charged. Both claims workers
    are asked to claim at once: one claim transaction, by one of them; on chain the
    channel's totalClaimed is the sum of the receipts."""
    stack = x402_local_stack
    payer, pay_to = new_funded_payer(stack), Account.create().address
    options = session_options(pay_to)
    with (
        uvicorn_server(stack, redis_url, logs / "a.log", meter_options=options) as a,
        uvicorn_server(stack, redis_url, logs / "b.log", meter_options=options) as b,
    ):
        async with sdk_payer(stack, payer) as http:
            turns = [a, b, a, b, a, b]
            receipts = [await paid(http, server) for server in turns]
            outcomes = await receipts_of(a.url, receipts)
            channel = await the_channel(redis_url, payer)
            sent = facilitator_transactions(stack)
            reports: list[dict[str, Any]] = []
            async with anyio.create_task_group() as tasks:
                for server in (a, b):
                    tasks.start_soon(lambda s: _append(reports, claim(http, s)), server)
            claimed = await the_channel(redis_url, payer)

    charges = [int(o["amount"]) for o in outcomes]
    assert {o["status"] for o in outcomes} == {"settled"}
    assert charges == [cost(o) for o in outcomes]
    assert channel.charged == sum(charges)
    totals = [c["totals"] for r in reports for c in r["claims"]]
    assert totals == [{channel.channel_id: str(sum(charges))}]  # claimed once, not twice
    assert facilitator_transactions(stack) == sent + 2  # the claim and its sweep
    assert claimed_on_chain(stack, channel) == sum(charges)
    assert claimed.claimed == sum(charges)
    assert contracts(stack).token_balance(pay_to) == sum(charges)


async def _append(reports: list[dict[str, Any]], report: Any) -> None:
    reports.append(await report)
