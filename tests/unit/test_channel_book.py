"""``ChannelBook``, the paying client's durable record of its session channels, and what a
refund counts back in ``PaymentLedger``.

The book is a directory on the real file system; two books on one directory stand for two
processes (``flock`` locks belong to an open file, so they exclude each other as processes
would). A record is used only if it is well formed, the payer's own, and its channel id is
the hash of its config; anything else is left alone.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Final

from eth_account import Account
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementClientContext
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.schemas import PaymentRequirements

from x402_meter.assets import default_asset
from x402_meter.client import PaymentLedger
from x402_meter.client._channel_book import BookedChannel, ChannelBook

NETWORK: Final = "eip155:8453"
PAYER: Final = Account.create()


def booked(payer: str = PAYER.address, balance: str = "1000") -> BookedChannel:
    config = ChannelConfig(
        payer=payer,
        payer_authorizer=payer,
        receiver="0x" + "11" * 20,
        receiver_authorizer="0x" + "33" * 20,
        token=default_asset(NETWORK).address,
        withdraw_delay=900,
        salt="0x" + secrets.token_hex(32),
    )
    return BookedChannel(
        channel_id=compute_channel_id(config, NETWORK).lower(),
        network=NETWORK,
        config=config,
        state=BatchSettlementClientContext(balance=balance, charged_cumulative_amount="40"),
        url="https://seller.example/v1/chat/completions",
    )


def test_a_record_is_written_atomically_for_its_owner_only_and_read_back(tmp_path: Path) -> None:
    book = ChannelBook(tmp_path / "store", PAYER.address)
    channel = booked()
    book.write(channel)
    book.write(channel)

    files = sorted(p.name for p in (tmp_path / "store").iterdir())
    assert files == [f"{channel.channel_id}.json", f"{channel.channel_id}.lock"]  # no temp left
    record = tmp_path / "store" / f"{channel.channel_id}.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o700
    assert book.read(channel.channel_id) == channel
    assert PAYER.key.hex().removeprefix("0x") not in record.read_text()


def test_a_channel_is_held_by_one_book_at_a_time_until_it_lets_go(tmp_path: Path) -> None:
    one, two = ChannelBook(tmp_path, PAYER.address), ChannelBook(tmp_path, PAYER.address)
    channel = booked()
    one.write(channel)  # written: claimed by the book that made it

    assert [c.channel_id for c in two.records()] == [channel.channel_id]
    assert two.adopt(channel.channel_id) is None  # the other holds it
    two.write(booked(balance="1"))  # another channel of its own: fine
    one.close()
    assert two.adopt(channel.channel_id) == channel
    assert one.adopt(channel.channel_id) is None


def test_records_that_are_not_the_payers_own_channels_are_left_alone(tmp_path: Path) -> None:
    book = ChannelBook(tmp_path, PAYER.address)
    stranger = booked(payer=Account.create().address)
    (tmp_path / f"{stranger.channel_id}.json").write_text(json.dumps(stranger.to_json()))
    renamed = booked().to_json()
    renamed["channelId"] = "0x" + "ab" * 32  # not the hash of its config
    (tmp_path / f"{renamed['channelId']}.json").write_text(json.dumps(renamed))
    words = booked().to_json()
    words["state"]["balance"] = "-5"
    (tmp_path / f"{words['channelId']}.json").write_text(json.dumps(words))
    (tmp_path / f"0x{'cd' * 32}.json").write_text("{not json")
    (tmp_path / "0xnot-a-channel.json").write_text("{}")

    assert book.records() == []
    assert len(list(tmp_path.glob("*.json"))) == 5  # nothing removed


def session_offer(amount: int) -> PaymentRequirements:
    return PaymentRequirements(
        scheme="batch-settlement",
        network=NETWORK,
        asset=default_asset(NETWORK).address,
        amount=str(amount),
        pay_to="0x" + "11" * 20,
        max_timeout_seconds=60,
        extra={},
    )


def test_a_refund_counts_back_at_most_what_this_wallet_deposited_in_its_channel() -> None:
    ledger = PaymentLedger(
        payer=PAYER.address, asset=default_asset(NETWORK), max_total=None, prover=None
    )
    ledger.reserve(session_offer(10), method="POST", url="u", channel_id="0xaa", deposit=500)
    ledger.reserve(session_offer(10), method="POST", url="u", channel_id="0xaa", deposit=100)
    ledger.reserve(session_offer(10), method="POST", url="u", channel_id="0xbb", deposit=300)

    assert ledger.record_refund("0xAA", 550) == 550
    assert ledger.record_refund("0xaa", 550) == 50  # only 600 went in
    assert ledger.record_refund("0xcc", 100) == 0  # an earlier process's channel
    assert (ledger.spent, ledger.refunded) == (300, 600)


def test_a_record_with_a_malformed_salt_or_delay_is_left_alone(tmp_path: Path) -> None:
    book = ChannelBook(tmp_path, PAYER.address)
    for field, value in (("salt", "0xnot-hex"), ("withdrawDelay", "soon"), ("payer", 7)):
        record = booked().to_json()
        record["config"][field] = value
        (tmp_path / f"{record['channelId']}.json").write_text(json.dumps(record))
    assert book.records() == []


HOLDER: Final = """
import sys
from x402_meter.client._channel_book import ChannelBook
book = ChannelBook(sys.argv[1], sys.argv[2])
assert book.claim(sys.argv[3])
print("claimed", flush=True)
sys.stdin.read()
"""


def test_a_process_killed_while_it_holds_a_channel_lets_go_of_it(tmp_path: Path) -> None:
    """``kill -9`` of the process holding a channel: no stale claim is left to clear."""
    channel = booked()
    writer = ChannelBook(tmp_path, PAYER.address)
    writer.write(channel)
    writer.close()
    book = ChannelBook(tmp_path, PAYER.address)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), PAYER.address, channel.channel_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"claimed\n"
        assert book.adopt(channel.channel_id) is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert book.adopt(channel.channel_id) == channel
