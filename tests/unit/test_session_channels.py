"""The wallet's session channels on their own (no network): leasing one per request, the
deposit each voucher needs, and what a streamed answer's receipt may say."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.to_thread
import pytest
from eth_account import Account
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentRequirements

from x402_meter.client import Payment, Receipt, SessionReceiptError
from x402_meter.client._sessions import SessionChannel, SessionChannels

pytestmark = pytest.mark.anyio

MAXIMUM = 8_000


def offer(pay_to: str = "0x" + "22" * 20, min_deposit: str | None = "80000") -> PaymentRequirements:
    extra: dict[str, Any] = {"receiverAuthorizer": "0x" + "33" * 20, "withdrawDelay": 900}
    if min_deposit is not None:
        extra["minDeposit"] = min_deposit
    return PaymentRequirements(
        scheme="batch-settlement",
        network="eip155:84532",
        asset="0x" + "44" * 20,
        amount=str(MAXIMUM),
        pay_to=pay_to,
        max_timeout_seconds=300,
        extra=extra,
    )


def sessions(max_sessions: int = 2, deposit: int | None = None) -> SessionChannels:
    signer = EthAccountSigner(Account.create())
    return SessionChannels(signer, max_sessions=max_sessions, deposit=deposit)


def bound(channels: SessionChannels) -> SessionChannel:
    channel = channels.lease_sync(offer())
    channel.bind(offer(), "http://seller.test/v1/chat/completions")
    return channel


def streamed_payment(channel: SessionChannel, cumulative: int, deposit: int = 0) -> Payment:
    return Payment(
        method="POST",
        url="http://seller.test/v1/chat/completions",
        scheme="batch-settlement",
        network="eip155:84532",
        asset="0x" + "44" * 20,
        pay_to="0x" + "22" * 20,
        payer="0x" + "55" * 20,
        max_amount=MAXIMUM,
        signed=True,
        channel_id=channel.id,
        deposit=deposit or None,
        cumulative=cumulative,
    )


def receipt(status: str, channel_id: str | None, charged: int | None) -> Receipt:
    channel: dict[str, Any] = {"id": channel_id}
    if charged is not None:
        channel["charged_cumulative"] = str(charged)
    return Receipt.from_json({"status": status, "channel": channel})


# -- leasing ------------------------------------------------------------------------------------


async def test_each_concurrent_request_gets_its_own_channel_up_to_max_sessions() -> None:
    channels = sessions(max_sessions=2)
    first = await channels.lease_async(offer())
    second = await channels.lease_async(offer())
    assert first is not second
    assert first.salt != second.salt  # two channel ids with one server
    channels.release(first)
    assert await channels.lease_async(offer()) is first  # a free one is used again


async def test_another_server_has_channels_of_its_own() -> None:
    channels = sessions(max_sessions=1)
    mine = await channels.lease_async(offer())
    theirs = await channels.lease_async(offer(pay_to="0x" + "66" * 20))
    assert mine is not theirs


async def test_beyond_max_sessions_a_request_waits_for_the_next_channel_given_back() -> None:
    channels = sessions(max_sessions=1)
    held = await channels.lease_async(offer())
    got: list[SessionChannel] = []

    async def wait() -> None:
        got.append(await channels.lease_async(offer()))

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        channels.release(held)
    assert got == [held]
    assert held.leased  # handed over, never free in between


async def test_a_cancelled_wait_leaves_the_queue() -> None:
    channels = sessions(max_sessions=1)
    held = await channels.lease_async(offer())
    with anyio.move_on_after(0):
        await channels.lease_async(offer())
    channels.release(held)
    assert not held.leased
    assert await channels.lease_async(offer()) is held


async def test_a_thread_waiting_is_woken_by_a_release_in_the_event_loop() -> None:
    channels = sessions(max_sessions=1)
    held = await channels.lease_async(offer())
    waiting = threading.Event()

    def lease_in_a_thread() -> SessionChannel:
        waiting.set()
        return channels.lease_sync(offer())

    async with anyio.create_task_group() as group:
        result: list[SessionChannel] = []

        async def run() -> None:
            result.append(await anyio.to_thread.run_sync(lease_in_a_thread))

        group.start_soon(run)
        await anyio.to_thread.run_sync(waiting.wait)
        channels.release(held)
    assert result == [held]


async def test_a_task_waiting_is_woken_by_a_release_in_another_thread() -> None:
    channels = sessions(max_sessions=1)
    held = await channels.lease_async(offer())
    got: list[SessionChannel] = []

    async def wait() -> None:
        got.append(await channels.lease_async(offer()))

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        await anyio.to_thread.run_sync(channels.release, held)
    assert got == [held]


async def test_a_channel_taken_back_waits_for_its_request_then_is_leased_itself() -> None:
    channels = sessions(max_sessions=2)
    busy = await channels.lease_async(offer())
    other = await channels.lease_async(offer())
    channels.release(other)
    got: list[SessionChannel] = []

    async def take_back() -> None:
        got.append(await channels.lease_channel_async(busy))

    async with anyio.create_task_group() as group:
        group.start_soon(take_back)
        await anyio.wait_all_tasks_blocked()
        assert await channels.lease_async(offer()) is other  # not the one being waited for
        channels.release(busy)
    assert got == [busy]


# -- deposits -------------------------------------------------------------------------------------


def test_the_first_deposit_is_the_servers_min_deposit_by_default() -> None:
    channel = bound(sessions())
    assert channel.plan_deposit(MAXIMUM, "80000", None) == 80_000
    assert channel.deposit_due == 80_000


def test_the_first_deposit_is_the_configured_size_or_what_the_voucher_needs() -> None:
    channel = bound(sessions())
    assert channel.plan_deposit(MAXIMUM, "80000", 20_000) == 20_000
    assert channel.plan_deposit(MAXIMUM, "80000", 1) == MAXIMUM


def test_without_a_valid_min_deposit_the_first_deposit_covers_five_maxima() -> None:
    channel = bound(sessions())
    assert channel.plan_deposit(MAXIMUM, None, None) == 5 * MAXIMUM
    assert channel.plan_deposit(MAXIMUM, "-1", None) == 5 * MAXIMUM
    assert channel.plan_deposit(MAXIMUM, "10", None) == 5 * MAXIMUM  # below one request


def test_a_voucher_within_the_balance_needs_no_deposit_and_one_past_it_a_top_up() -> None:
    channel = bound(sessions())
    assert channel.id is not None
    state = channel.state()
    state.balance, state.charged_cumulative_amount = "20000", "12000"
    channel.storage.set(channel.id, state)
    assert channel.plan_deposit(MAXIMUM, "80000", None) is None  # 20000 covers 12000 + 8000
    assert channel.deposit_due is None
    assert channel.plan_deposit(MAXIMUM + 1, "80000", 5) == 5  # the size chosen
    assert channel.plan_deposit(MAXIMUM + 100, "80000", 5) == 100  # at least what it needs
    assert channel.plan_deposit(MAXIMUM + 1, "80000", None) == 80_000


# -- receipts -------------------------------------------------------------------------------------


def test_a_receipt_within_the_voucher_sets_the_charge_and_the_deposit() -> None:
    channel = bound(sessions())
    channel.expect_receipt(streamed_payment(channel, cumulative=MAXIMUM, deposit=80_000))
    channel.apply_receipt(receipt("settled", channel.id, 300))
    assert (channel.deposited(), channel.charged(), channel.pending) == (80_000, 300, None)


@pytest.mark.parametrize("claimed", [MAXIMUM + 1, 10**30])
def test_a_receipt_above_the_voucher_is_refused_and_the_channel_retired(claimed: int) -> None:
    channels = sessions(max_sessions=1)
    channel = bound(channels)
    channel.expect_receipt(streamed_payment(channel, cumulative=MAXIMUM, deposit=80_000))
    with pytest.raises(SessionReceiptError):
        channel.apply_receipt(receipt("settled", channel.id, claimed))
    assert (channel.charged(), channel.deposited(), channel.pending) == (0, 80_000, None)
    assert channel.retired is not None
    channels.release(channel)
    assert channels.lease_sync(offer()) is not channel  # a new channel in its place


@pytest.mark.parametrize(
    "channel_of",
    [
        lambda own: {"id": "0x" + "77" * 32, "charged_cumulative": "1"},  # another channel
        lambda own: {"charged_cumulative": "1"},  # none named
        lambda own: {"id": own, "charged_cumulative": "-1"},
        lambda own: {"id": own, "charged_cumulative": 1},  # not the canonical string
        lambda own: {"id": own},  # no charge in a settled receipt
    ],
)
def test_a_receipt_for_another_channel_or_without_a_readable_charge_is_refused(
    channel_of: Any,
) -> None:
    channel = bound(sessions())
    channel.expect_receipt(streamed_payment(channel, cumulative=MAXIMUM))
    body = {"status": "settled", "channel": channel_of(channel.id)}
    with pytest.raises(SessionReceiptError):
        channel.apply_receipt(Receipt.from_json(body))
    assert channel.retired is not None


@pytest.mark.parametrize("status", ["pending", "failed"])
def test_a_receipt_without_a_final_charge_leaves_it_unknown_and_keeps_the_deposit(
    status: str,
) -> None:
    channel = bound(sessions())
    channel.expect_receipt(streamed_payment(channel, cumulative=MAXIMUM, deposit=80_000))
    channel.apply_receipt(receipt(status, channel.id, None))
    assert (channel.deposited(), channel.charged(), channel.pending) == (80_000, 0, None)
