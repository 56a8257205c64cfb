"""Sessions (``batch-settlement``) in the middleware: the offer, one deposit then vouchers
admitted with no facilitator call, each answer charged its exact cost in the channel store,
what the client is told, and every refusal a 402 (or 400) with the spec's reason.

Payments are signed by the official SDK's client functions (real EIP-712 signatures, checked
by the meter itself); the facilitator is the in-process one, whose channel ledger stands in
for the chain.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send
from x402 import x402Client
from x402.http.clients.httpx import x402_httpx_transport
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme as PayerScheme
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentRequirements

from tests.apps import PRICE_ATOMIC
from tests.inprocess.facilitator import (
    NETWORK,
    RECEIVER_AUTHORIZER,
    TRANSACTION,
    InProcessFacilitator,
)
from tests.inprocess.harness import (
    ASSET,
    HANG,
    PAYER,
    QUESTION,
    STREAMED,
    WaitingApp,
    calling,
    chat_app,
    header,
    offered,
    receipt_of,
)
from tests.inprocess.sessions import (
    SESSIONS,
    ChannelPayer,
    channel_of,
    send,
    session_meter,
    session_offer,
    settlement,
)
from tests.openai_stream import COMPLETION_TOKENS, PIECES, PROMPT_TOKENS, completion_json
from tests.security.test_sessions import Counted
from x402_meter import X402Meter
from x402_meter.devstack.accounts import PAYERS
from x402_meter.metrics import PrometheusMetrics
from x402_meter.schemes.batch_settlement import BatchSettlementScheme
from x402_meter.schemes.channel_state import ChargingChannels
from x402_meter.store import LedgerState, MemoryStore, PaymentRecord

pytestmark = pytest.mark.anyio

ANSWER_COST = (PROMPT_TOKENS + COMPLETION_TOKENS) * PRICE_ATOMIC
"""What a JSON answer of the chat app costs: the usage it reports, at the price."""


async def opened(
    meter: X402Meter, client: httpx.AsyncClient, payer: ChannelPayer, deposit_times: int = 10
) -> tuple[PaymentRequirements, int]:
    """Open ``payer``'s channel with a first paid request (a deposit of ``deposit_times``
    the maximum); the requirements and what the channel has charged since."""
    requirements = await session_offer(client, QUESTION)
    maximum = int(requirements.amount)
    answer = await send(
        client, QUESTION, payer.deposit(requirements, maximum, deposit_times * maximum)
    )
    assert answer.status_code == 200, answer.text
    return requirements, (await channel_of(meter, payer.channel_id(requirements))).charged


# -- the offer ------------------------------------------------------------------------------


async def test_the_402_offers_a_session_beside_upto_for_the_same_maximum() -> None:
    meter = session_meter(chat_app(), InProcessFacilitator(), session_deposit_multiple=4)
    async with calling(meter) as client:
        challenge = await client.post("/v1/chat/completions", json=QUESTION)
    upto, session = offered(challenge, "upto"), offered(challenge, SESSIONS)
    assert session.amount == upto.amount
    assert (session.asset, session.pay_to, session.network) == (upto.asset, upto.pay_to, NETWORK)
    assert session.extra == {
        "name": ASSET.name,
        "version": ASSET.version,
        "receiverAuthorizer": RECEIVER_AUTHORIZER,
        "withdrawDelay": 900,
        "minDeposit": str(4 * int(upto.amount)),
        "assetTransferMethod": "eip3009",
    }


async def test_the_sellers_own_receiver_authorizer_and_withdraw_delay_are_offered() -> None:
    class Authorizer:
        address = PAYERS[5].address

    meter = session_meter(
        chat_app(),
        InProcessFacilitator(),
        session_receiver_authorizer=Authorizer(),
        session_withdraw_delay=3600,
    )
    async with calling(meter) as client:
        session = await session_offer(client, QUESTION)
    assert session.extra is not None
    assert session.extra["receiverAuthorizer"] == PAYERS[5].address
    assert session.extra["withdrawDelay"] == 3600


# -- the official client pays -----------------------------------------------------------------


async def test_the_sdk_client_deposits_once_then_pays_by_voucher_with_no_facilitator_call() -> None:
    """The official client (its own channel state, its own deposit size) pays four JSON
    answers: the first deposits (the facilitator verifies and settles it), the next three
    are vouchers the meter admits alone. Each answer is charged its exact cost, and the
    client follows the charged cumulative from each PAYMENT-RESPONSE."""
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator)
    payer = x402Client().register(NETWORK, PayerScheme(EthAccountSigner(PAYER.account)))
    payer.set_spend_controls({"allowed_assets": [{"network": NETWORK, "asset": ASSET.address}]})
    transport = x402_httpx_transport(payer, httpx.ASGITransport(app=meter))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as paying:
        first = await paying.post("/v1/chat/completions", json=QUESTION)
        assert first.status_code == 200, first.text
        assert facilitator.calls == ["/verify", "/settle"]
        answers = [await paying.post("/v1/chat/completions", json=QUESTION) for _ in range(3)]
    await meter.runtime.settler.aclose()
    assert facilitator.calls == ["/verify", "/settle"]  # no call for any voucher
    settled = [settlement(a) for a in (first, *answers)]
    assert [s["extra"]["chargedAmount"] for s in settled] == [str(ANSWER_COST)] * 4
    cumulative = [int(s["extra"]["channelState"]["chargedCumulativeAmount"]) for s in settled]
    assert cumulative == [ANSWER_COST * n for n in range(1, 5)]
    # the deposit's answer names its transaction; a voucher's charge has none
    assert [s["transaction"] for s in settled] == [TRANSACTION, "", "", ""]


# -- the charge -----------------------------------------------------------------------------


async def test_each_answer_is_charged_its_cost_and_the_channel_keeps_the_latest_voucher() -> None:
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        maximum = int(requirements.amount)
        assert charged == ANSWER_COST
        voucher = payer.voucher(requirements, charged + maximum)
        answer = await send(client, QUESTION, voucher)
    assert answer.status_code == 200
    channel = await channel_of(meter, payer.channel_id(requirements))
    assert channel.charged == 2 * ANSWER_COST
    assert channel.voucher_max == charged + maximum
    assert channel.voucher_signature == voucher.payload["voucher"]["signature"].lower()
    assert channel.serving is None
    assert channel.balance == 10 * maximum
    assert facilitator.calls == ["/verify", "/settle"]


async def test_a_streamed_answer_is_charged_in_its_receipt() -> None:
    meter = session_meter(chat_app(), InProcessFacilitator())
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        answer = await send(
            client, STREAMED, payer.voucher(requirements, charged + int(requirements.amount))
        )
        receipt = await receipt_of(client, answer)
    assert answer.status_code == 200
    assert "payment-response" not in answer.headers  # the headers left before the charge
    cost = int(receipt["amount"])
    assert 0 < cost < int(requirements.amount)
    assert receipt["status"] == "settled"
    assert receipt["transaction"] is None
    assert receipt["channel"] == {
        "id": payer.channel_id(requirements),
        "charged_cumulative": str(charged + cost),
    }
    assert (await channel_of(meter, payer.channel_id(requirements))).charged == charged + cost


async def test_a_streamed_answer_ends_only_once_its_channel_is_charged_and_free() -> None:
    """The body's end reaches the server (so the client) after the charge: a client that has
    read the answer to its end may pay the next one at once, on any server sharing the
    channel store, without finding the channel busy. The content itself is not held back."""
    meter = session_meter(chat_app(), InProcessFacilitator())
    payer = ChannelPayer()
    at_the_end: list[Any] = []
    content_before_the_end: list[bytes] = []

    async def server(scope: Scope, receive: Receive, send: Send) -> None:
        async def watch(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                channel = await channel_of(meter, payer.channel_id(requirements))
                at_the_end.append((channel.charged, channel.serving))
                content_before_the_end.append(b"".join(seen))
            elif message["type"] == "http.response.body":
                seen.append(message.get("body", b""))
            await send(message)

        seen: list[bytes] = []
        paid = scope["type"] == "http" and scope["method"] == "POST"
        await meter(scope, receive, watch if paid else send)

    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=server), base_url="http://testserver"
    ) as client:
        voucher = payer.voucher(requirements, charged + int(requirements.amount))
        answer = await send(client, STREAMED, voucher)
        receipt = await receipt_of(client, answer)
    assert answer.status_code == 200
    assert at_the_end == [(charged + int(receipt["amount"]), None)]
    assert content_before_the_end == [answer.content]  # all of it went out before


async def test_an_answer_that_failed_is_charged_nothing_and_frees_the_channel() -> None:
    facilitator = InProcessFacilitator()
    payer = ChannelPayer()
    good = session_meter(chat_app(), facilitator)
    async with calling(good) as client:
        requirements, charged = await opened(good, client, payer)
    failing = session_meter(chat_app(status=500), facilitator, channel_store=good.runtime.channels)
    async with calling(failing) as client:
        voucher = payer.voucher(requirements, charged + int(requirements.amount))
        answer = await send(client, QUESTION, voucher)
        receipt = await receipt_of(client, answer)
    assert answer.status_code == 500
    assert receipt["status"] == "not_charged"
    channel = await channel_of(good, payer.channel_id(requirements))
    assert (channel.charged, channel.serving) == (charged, None)
    assert channel.voucher_max == int(requirements.amount)  # still the deposit's voucher


async def test_an_answer_is_capped_at_its_voucher_increment() -> None:
    """With 20 tokens of output allowed, the chat app's JSON answer (116 reported) costs
    more than the voucher's increment: the charge is the increment, never more."""
    meter = session_meter(chat_app(), InProcessFacilitator(), max_tokens=20)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        maximum = int(requirements.amount)
        assert charged == maximum  # the first answer hit its cap too
        answer = await send(client, QUESTION, payer.voucher(requirements, charged + maximum))
    assert settlement(answer)["extra"]["chargedAmount"] == str(maximum)
    assert (await channel_of(meter, payer.channel_id(requirements))).charged == 2 * maximum


# -- when the facilitator is asked ------------------------------------------------------------


async def test_a_stale_mirror_is_refreshed_by_one_facilitator_verify() -> None:
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        channels = meter.runtime.channels
        assert channels is not None
        record = await channel_of(meter, payer.channel_id(requirements))
        assert await channels.put(dataclasses.replace(record, synced_at=0.0)) is not None
        maximum = int(requirements.amount)
        refreshed = await send(client, QUESTION, payer.voucher(requirements, charged + maximum))
        local = await send(
            client, QUESTION, payer.voucher(requirements, charged + ANSWER_COST + maximum)
        )
    assert (refreshed.status_code, local.status_code) == (200, 200)
    assert facilitator.calls == ["/verify", "/settle", "/verify"]


async def test_a_server_without_the_channel_takes_the_chains_claimed_total_as_baseline() -> None:
    """A server that lost its channel record (here: another meter on the same chain) never
    takes the client's word for the charged baseline: the voucher must build on what was
    claimed on chain, and the corrective 402 says so, with no voucher of ours to show."""
    facilitator = InProcessFacilitator()
    payer = ChannelPayer()
    first = session_meter(chat_app(), facilitator)
    async with calling(first) as client:
        requirements, charged = await opened(first, client, payer)
    facilitator.channels[payer.channel_id(requirements)].total_claimed = 100
    amnesiac = session_meter(chat_app(), facilitator)
    maximum = int(requirements.amount)
    async with calling(amnesiac) as client:
        claimed = await send(client, QUESTION, payer.voucher(requirements, charged + maximum))
        from_chain = await send(client, QUESTION, payer.voucher(requirements, 100 + maximum))
    assert claimed.status_code == 402
    assert claimed.json()["reason"] == "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    state = offered(claimed, SESSIONS).extra
    assert state is not None
    assert state["channelState"]["chargedCumulativeAmount"] == "100"
    assert "voucherState" not in state
    assert from_chain.status_code == 200
    assert (await channel_of(amnesiac, payer.channel_id(requirements))).charged == 100 + (
        ANSWER_COST
    )


# -- refusals -------------------------------------------------------------------------------


async def test_a_stale_cumulative_gets_the_corrective_402_with_the_servers_voucher() -> None:
    meter = session_meter(chat_app(), InProcessFacilitator())
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        maximum = int(requirements.amount)
        first = payer.voucher(requirements, charged + maximum)
        assert (await send(client, QUESTION, first)).status_code == 200
        stale = await send(client, QUESTION, payer.voucher(requirements, charged + maximum))
    assert stale.status_code == 402
    assert stale.json()["reason"] == "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    extra = offered(stale, SESSIONS).extra
    assert extra is not None
    assert extra["channelState"]["chargedCumulativeAmount"] == str(charged + ANSWER_COST)
    assert extra["voucherState"] == {
        "signedMaxClaimable": str(charged + maximum),
        "signature": first.payload["voucher"]["signature"].lower(),
    }


async def test_a_second_request_on_a_busy_channel_is_refused_as_busy() -> None:
    app = WaitingApp()
    payer = ChannelPayer()
    facilitator = InProcessFacilitator()
    opener = session_meter(chat_app(), facilitator)
    async with calling(opener) as client:
        requirements, charged = await opened(opener, client, payer)
    meter = session_meter(app, facilitator, channel_store=opener.runtime.channels)
    maximum = int(requirements.amount)
    answers: list[httpx.Response] = []
    async with calling(meter) as client:
        with anyio.fail_after(HANG):  # a guard against a hang, not a timing assertion
            async with anyio.create_task_group() as tasks:
                voucher = payer.voucher(requirements, charged + maximum)

                async def streaming() -> None:
                    answers.append(await send(client, STREAMED, voucher))

                tasks.start_soon(streaming)
                await app.streaming.wait()
                busy = await send(client, STREAMED, payer.voucher(requirements, charged + maximum))
                app.finish.set()
    assert busy.status_code == 402
    assert busy.json()["reason"] == "invalid_batch_settlement_evm_channel_busy"
    assert answers[0].status_code == 200


async def test_a_voucher_above_the_balance_is_refused() -> None:
    meter = session_meter(chat_app(), InProcessFacilitator())
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer, deposit_times=1)
        maximum = int(requirements.amount)
        answer = await send(client, QUESTION, payer.voucher(requirements, charged + maximum))
    assert answer.status_code == 402
    assert answer.json()["reason"] == "invalid_batch_settlement_evm_cumulative_exceeds_balance"
    assert (await channel_of(meter, payer.channel_id(requirements))).charged == charged


async def test_a_channel_with_a_withdrawal_requested_takes_no_more_vouchers() -> None:
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        facilitator.channels[payer.channel_id(requirements)].withdraw_requested_at = 1_700_000_000
        channels = meter.runtime.channels
        assert channels is not None
        record = await channel_of(meter, payer.channel_id(requirements))
        assert await channels.put(dataclasses.replace(record, synced_at=0.0)) is not None
        answer = await send(
            client, QUESTION, payer.voucher(requirements, charged + int(requirements.amount))
        )
    assert answer.status_code == 402
    assert answer.json()["reason"] == "channel_withdrawal_pending"


async def test_a_forged_voucher_is_refused_with_no_facilitator_call() -> None:
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator)
    payer, forger = ChannelPayer(), ChannelPayer(PAYERS[2].private_key)
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        forged = forger.voucher(
            requirements,
            charged + int(requirements.amount),
            config=payer.config(requirements),
        )
        answer = await send(client, QUESTION, forged)
    assert answer.status_code == 402
    assert answer.json()["reason"] == "invalid_batch_settlement_evm_voucher_signature"
    assert facilitator.calls == ["/verify", "/settle"]


async def test_a_voucher_for_another_channel_id_than_its_config_is_refused() -> None:
    meter = session_meter(chat_app(), InProcessFacilitator())
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        wrong = payer.voucher(
            requirements, charged + int(requirements.amount), channel_id="0x" + "12" * 32
        )
        answer = await send(client, QUESTION, wrong)
    assert answer.status_code == 402
    assert answer.json()["reason"] == "invalid_batch_settlement_evm_channel_id_mismatch"


@pytest.mark.parametrize(
    ("change", "reason", "status"),
    [
        ({"type": "claim"}, "invalid_batch_settlement_evm_payload_type", 402),
        ({"voucher": {"channelId": "0x12"}}, "invalid_payload", 400),
        ({"channelConfig": {"withdrawDelay": "900"}}, "invalid_payload", 400),
        ({"voucher": {"maxClaimableAmount": "0100"}}, "invalid_payload", 400),
        ({"voucher": {"maxClaimableAmount": str(2**128)}}, "invalid_payload", 400),
        ({"channelConfig": {"receiver": PAYERS[1].address}}, None, 402),
    ],
)
async def test_a_malformed_or_foreign_payload_is_refused_before_anything_else(
    change: dict[str, Any], reason: str | None, status: int
) -> None:
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        voucher = payer.voucher(requirements, charged + int(requirements.amount))
        for name, fields in change.items():
            if isinstance(fields, dict):
                voucher.payload[name] = {**voucher.payload[name], **fields}
            else:
                voucher.payload[name] = fields
        answer = await send(client, QUESTION, voucher)
    assert answer.status_code == status
    assert answer.json()["reason"] == (reason or "invalid_batch_settlement_evm_channel_id_mismatch")
    assert facilitator.calls == ["/verify", "/settle"]


async def test_a_deposit_that_does_not_land_frees_the_channel_and_serves_nothing() -> None:
    from tests.inprocess.facilitator import Refusal

    facilitator = InProcessFacilitator(
        settle_refusal=Refusal("invalid_batch_settlement_evm_deposit_transaction_failed")
    )
    meter = session_meter(chat_app(), facilitator)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements = await session_offer(client, QUESTION)
        maximum = int(requirements.amount)
        answer = await send(client, QUESTION, payer.deposit(requirements, maximum, 10 * maximum))
    assert answer.status_code == 402
    assert answer.json()["reason"] == "invalid_batch_settlement_evm_deposit_transaction_failed"
    channel = await channel_of(meter, payer.channel_id(requirements))
    assert (channel.serving, channel.charged, channel.balance) == (None, 0, 0)
    assert facilitator.calls == ["/verify", "/settle"]


class SlowCharge(MemoryStore):
    """A ledger whose write of a charge (``to_settle``) waits, once armed, until the test
    lets it go (``proceed``): the client can leave while its answer is being charged."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.charging = anyio.Event()
        self.proceed = anyio.Event()

    async def save(self, record: PaymentRecord) -> None:
        if self.armed and record.state is LedgerState.TO_SETTLE:
            self.armed = False
            self.charging.set()
            await self.proceed.wait()
        await super().save(record)


def json_in_a_stream_app() -> Any:
    """A chat endpoint that sends its JSON answer through a ``StreamingResponse`` (as a
    proxy does): the meter holds it until charged, and Starlette listens for the client
    leaving meanwhile."""

    async def chat(request: Request) -> StreamingResponse:
        await request.body()

        async def whole() -> AsyncIterator[bytes]:
            yield json.dumps(completion_json("".join(PIECES))).encode()

        return StreamingResponse(whole(), media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.mark.parametrize(
    ("app", "question"),
    [(chat_app, STREAMED), (json_in_a_stream_app, QUESTION)],
    ids=["streamed", "held"],
)
async def test_a_client_that_leaves_while_its_answer_is_charged_is_charged_it_all(
    app: Any, question: dict[str, Any]
) -> None:
    """The end of a streamed body waits for the charge (a held answer, all of it); the
    client leaves meanwhile (Starlette then cancels the send that waits). The charge still
    completes: the whole answer is charged and the channel is free at once, not left to
    the sweeper at the last checkpoint."""
    ledger = SlowCharge()
    meter = session_meter(app(), InProcessFacilitator(), store=ledger)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements = await session_offer(client, question)
        maximum = int(requirements.amount)
        deposit = payer.deposit(requirements, maximum, 10 * maximum)
        assert (await send(client, question, deposit)).status_code == 200
    charged = (await channel_of(meter, payer.channel_id(requirements))).charged
    voucher = payer.voucher(requirements, charged + int(requirements.amount))
    body = json.dumps(question).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            *[(k.encode(), v.encode()) for k, v in header(voucher).items()],
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    requested = False
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await ledger.charging.wait()
        return {"type": "http.disconnect"}

    async def send_to_client(message: Message) -> None:
        sent.append(message)

    ledger.armed = True
    with anyio.fail_after(HANG):  # a guard against a hang, not a timing assertion
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(meter, scope, receive, send_to_client)
            await ledger.charging.wait()
            await anyio.wait_all_tasks_blocked()  # the disconnect has reached the app
            ledger.proceed.set()
    [left] = await ledger.list(limit=1)
    channel = await channel_of(meter, payer.channel_id(requirements))
    async with calling(meter) as client:  # the same answer, read to its end
        again = payer.voucher(requirements, channel.charged + int(requirements.amount))
        whole = await receipt_of(client, await send(client, question, again))
    assert sent[0]["status"] == 200
    assert left.state is LedgerState.SETTLED
    assert left.amount == int(whole["amount"]) > 0
    assert (channel.charged, channel.serving) == (charged + left.amount, None)


class FailsToRecordOnce(MemoryStore):
    """A ledger whose next write of a newly verified row fails (a disk full, a lost
    connection), once the test arms it; the channels are kept elsewhere and still work."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    async def save(self, record: PaymentRecord) -> None:
        if self.armed and record.state is LedgerState.VERIFIED and record.amount is None:
            self.armed = False
            raise OSError("no space left on device")
        await super().save(record)


async def test_a_payment_the_ledger_cannot_record_is_not_served_and_frees_its_channel() -> None:
    """The row of an admitted voucher cannot be written: nothing is served (nothing could be
    charged), the answer is a 503 with a reason, and the channel is free at once, not when
    the request's lease runs out minutes later: the same voucher is then served."""
    ledger = FailsToRecordOnce()
    app = Counted(chat_app())
    meter = session_meter(app, InProcessFacilitator(), store=ledger)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        runs = app.runs
        voucher = payer.voucher(requirements, charged + int(requirements.amount))
        ledger.armed = True
        refused = await send(client, QUESTION, voucher)
        channel = await channel_of(meter, payer.channel_id(requirements))
        served = await send(client, QUESTION, voucher)
    assert refused.status_code == 503
    assert refused.json()["reason"] == "ledger_unavailable"
    assert (channel.serving, channel.charged) == (None, charged)
    assert served.status_code == 200
    assert app.runs == runs + 1
    assert (await channel_of(meter, payer.channel_id(requirements))).charged == 2 * ANSWER_COST


class FailsToChargeOnce(MemoryStore):
    """A ledger whose next write of a charge (``to_settle``) fails, once the test arms it."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    async def save(self, record: PaymentRecord) -> None:
        if self.armed and record.state is LedgerState.TO_SETTLE:
            self.armed = False
            raise OSError("no space left on device")
        await super().save(record)


async def test_a_charge_the_ledger_cannot_record_leaves_no_request_waiting_on_it() -> None:
    """The ledger write of an answer's charge fails: the answer's row stays ``verified``
    and holds the channel (the sweeper charges it later), and this process no longer says
    the channel's charge is in progress, so the next request on it is refused as busy at
    once instead of waiting for a charge that will not come (up to 5 s, each request, until
    another charge of the channel cleared the mark)."""
    ledger = FailsToChargeOnce()
    meter = session_meter(chat_app(), InProcessFacilitator(), store=ledger)
    scheme = meter.runtime.schemes[SESSIONS]
    assert isinstance(scheme, BatchSettlementScheme)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        channel_id = payer.channel_id(requirements)
        voucher = payer.voucher(requirements, charged + int(requirements.amount))
        ledger.armed = True
        with pytest.raises(OSError, match="no space left"):
            await send(client, QUESTION, voucher)
        assert not scheme.charging.charging(channel_id)
        again = payer.voucher(requirements, charged + 2 * int(requirements.amount))
        refused = await send(client, QUESTION, again)
    assert refused.status_code == 402
    assert refused.json()["reason"] == "invalid_batch_settlement_evm_channel_busy"
    assert (await channel_of(meter, channel_id)).serving is not None


# -- a server that died mid-stream --------------------------------------------------------------


async def test_a_row_left_mid_stream_is_charged_to_its_channel_by_another_worker() -> None:
    """A server died while streaming: its ledger row is still ``verified`` with its last
    checkpoint, its request still holds the channel. Another worker's sweeper, once the
    row's lease has run out, charges the checkpoint to the channel and frees it."""
    facilitator = InProcessFacilitator()
    payer = ChannelPayer()
    dead = session_meter(chat_app(), facilitator)
    async with calling(dead) as client:
        requirements, charged = await opened(dead, client, payer)
        answer = await send(
            client, STREAMED, payer.voucher(requirements, charged + int(requirements.amount))
        )
    receipt_id = answer.headers["x-payment-receipt"].rsplit("/", 1)[-1]
    store, channels = dead.runtime.store, dead.runtime.channels
    assert channels is not None
    served = await store.get(receipt_id)
    channel = await channel_of(dead, payer.channel_id(requirements))
    assert served is not None
    assert served.amount
    # As the dead server left them: the row verified at its checkpoint, the channel held.
    left = dataclasses.replace(
        served, state=LedgerState.VERIFIED, amount=served.amount - 1, lease_until=1.0
    )
    await store.save(left)
    held = dataclasses.replace(
        channel,
        charged=charged,
        serving=served.key,
        serving_until=time.time() + 300,
        last_charged=None,
    )
    assert await channels.put(held) is not None

    worker = session_meter(chat_app(), facilitator, store=store, channel_store=channels)
    assert await worker.runtime.settler.sweep() == 1
    await worker.runtime.settler.drain()

    recovered = await store.get(receipt_id)
    assert recovered is not None
    assert (recovered.state, recovered.amount) == (LedgerState.SETTLED, served.amount - 1)
    after = await channel_of(worker, payer.channel_id(requirements))
    assert (after.charged, after.serving) == (charged + served.amount - 1, None)


async def test_a_channel_whose_dead_holder_is_not_yet_charged_stays_busy_past_its_lease() -> None:
    """A server died mid-stream, and its channel's lease (the dead request's
    ``max_timeout_seconds``) is over before its row was recovered (no worker ran meanwhile,
    or the row's lease, renewed while it streamed, ends later). A new voucher arriving
    before the sweeper has charged the dead answer is refused as busy: taking the channel
    would have started it from a charged cumulative without the dead answer, whose charge
    would then be lost (``channel_lock_lost``). Once the sweeper charged it, the channel
    serves again, from the charged cumulative that includes it."""
    facilitator = InProcessFacilitator()
    payer = ChannelPayer()
    dead = session_meter(chat_app(), facilitator)
    async with calling(dead) as client:
        requirements, charged = await opened(dead, client, payer)
        maximum = int(requirements.amount)
        answer = await send(client, STREAMED, payer.voucher(requirements, charged + maximum))
    receipt_id = answer.headers["x-payment-receipt"].rsplit("/", 1)[-1]
    store, channels = dead.runtime.store, dead.runtime.channels
    assert channels is not None
    served = await store.get(receipt_id)
    channel = await channel_of(dead, payer.channel_id(requirements))
    assert served is not None
    assert served.amount
    # The dead request streamed long: its row's lease (renewed while it streamed) runs out
    # after its channel's (its authorization's expiry).
    row_lease = time.time() + 3600
    await store.save(dataclasses.replace(served, state=LedgerState.VERIFIED, lease_until=row_lease))
    left = dataclasses.replace(
        channel, charged=charged, serving=served.key, serving_until=1.0, last_charged=None
    )
    assert await channels.put(left) is not None

    worker = session_meter(chat_app(), facilitator, store=store, channel_store=channels)
    async with calling(worker) as client:
        early = await send(client, QUESTION, payer.voucher(requirements, charged + maximum))
        assert await worker.runtime.settler.sweep(row_lease + 1) == 1
        await worker.runtime.settler.drain()
        after = charged + served.amount
        later = await send(client, QUESTION, payer.voucher(requirements, after + maximum))
    assert early.status_code == 402
    assert early.json()["reason"] == "invalid_batch_settlement_evm_channel_busy"
    recovered = await store.get(receipt_id)
    assert recovered is not None
    assert (recovered.state, recovered.amount) == (LedgerState.SETTLED, served.amount)
    assert later.status_code == 200
    assert (await channel_of(worker, payer.channel_id(requirements))).charged == (
        after + ANSWER_COST
    )


async def test_charging_channels_wake_a_waiting_request_when_the_charge_is_done() -> None:
    charging = ChargingChannels()
    assert not await charging.wait("0xaa", 10)  # nothing charging: no wait at all
    charging.begin("0xaa")
    woken: list[bool] = []
    async with anyio.create_task_group() as tasks:

        async def waiter() -> None:
            woken.append(await charging.wait("0xaa", HANG))

        tasks.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert charging.charging("0xaa")
        charging.end("0xaa")
    assert woken == [True]
    assert not charging.charging("0xaa")


# -- what the metrics count -------------------------------------------------------------------


async def test_every_refused_deposit_or_voucher_is_counted_by_its_reason() -> None:
    """Forged, malformed, another channel's, over the balance: each refusal counted once
    under its reason, whether the payload's reading, the channel's terms or admission
    refused it; the admitted ones counted as vouchers checked locally."""
    registry = CollectorRegistry()
    meter = session_meter(chat_app(), InProcessFacilitator(), metrics=PrometheusMetrics(registry))
    payer, forger = ChannelPayer(), ChannelPayer(PAYERS[2].private_key)
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer, deposit_times=3)
        maximum = int(requirements.amount)
        paid = await send(client, QUESTION, payer.voucher(requirements, charged + maximum))
        assert paid.status_code == 200
        charged = (await channel_of(meter, payer.channel_id(requirements))).charged
        config = payer.config(requirements)
        malformed = payer.voucher(requirements, charged + maximum)
        malformed.payload["voucher"] = {**malformed.payload["voucher"], "channelId": "0x12"}
        refused = [
            forger.voucher(requirements, charged + maximum, config=config),
            malformed,
            payer.voucher(requirements, charged + maximum, channel_id="0x" + "12" * 32),
            payer.voucher(requirements, charged + 2 * maximum),  # not charged + maximum
        ]
        for voucher in refused:
            assert (await send(client, QUESTION, voucher)).status_code in (400, 402)

    def count(name: str, **labels: str) -> float:
        return registry.get_sample_value(f"x402_meter_session_{name}", labels) or 0.0

    for reason in (
        "invalid_batch_settlement_evm_voucher_signature",
        "invalid_payload",
        "invalid_batch_settlement_evm_channel_id_mismatch",
        "invalid_batch_settlement_evm_cumulative_amount_mismatch",
    ):
        assert count("refusals_total", reason=reason) == 1, reason
    assert count("vouchers_total", check="local") == 1
    assert count("deposits_total", asset=ASSET.address, network=NETWORK) == 1
    assert count("charges_total", asset=ASSET.address, network=NETWORK) == 2


async def test_a_voucher_on_a_stale_mirror_counts_as_checked_by_the_facilitator() -> None:
    registry = CollectorRegistry()
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator, metrics=PrometheusMetrics(registry))
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        channels = meter.runtime.channels
        assert channels is not None
        record = await channel_of(meter, payer.channel_id(requirements))
        assert await channels.put(dataclasses.replace(record, synced_at=0.0)) is not None
        maximum = int(requirements.amount)
        for cumulative in (charged + maximum, charged + ANSWER_COST + maximum):
            paid = await send(client, QUESTION, payer.voucher(requirements, cumulative))
            assert paid.status_code == 200
    assert facilitator.calls == ["/verify", "/settle", "/verify"]
    checks = {
        check: registry.get_sample_value("x402_meter_session_vouchers_total", {"check": check})
        for check in ("facilitator", "local")
    }
    assert checks == {"facilitator": 1.0, "local": 1.0}
