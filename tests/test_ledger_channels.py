"""``x402-meter ledger`` for sessions: channels, their charges, the claims, and ``retry`` of a
refused claim, against a SQLite file and a Redis server (the session's redis-server, in a
database of its own), read beside the ledger as the meter keeps them.

The command runs in-process (``x402_meter.cli.main``); the store is seeded as the meter
writes it: channel records, the claim log, and one ledger row per answer served on a
channel (a voucher payload, its maximum, its charge).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis import Redis

from tests.ledger_rows import payment_row
from tests.test_channel_store_conformance import channel
from x402_meter.cli import main
from x402_meter.ledger_channels import charge_of
from x402_meter.store import (
    ChannelRecord,
    ClaimedChannel,
    ClaimRecord,
    LedgerState,
    PaymentRecord,
    channel_store_beside,
    open_store,
)

OPEN = "0x" + "a1" * 32
"""A channel with charges to claim, its last claim refused (backing off)."""
DONE = "0x" + "b2" * 32
"""A channel claimed to the last unit, its payer withdrawing."""
CLAIM_TX = "0x" + "c3" * 32
NOW = time.time()
"""Read once, at import: the whole suite may run between here and a test using it."""
AHEAD = NOW + 86_400
"""A hold's or a backoff's end that no run of the suite reaches (the CLI compares it with
the clock when it lists)."""


def session_row(
    receipt_id: str, channel_id: str, cumulative: int, maximum: int, amount: int | None, at: float
) -> PaymentRecord:
    """The ledger row of one answer on ``channel_id``: a voucher for ``cumulative`` (what was
    charged before + ``maximum``), charged ``amount`` (None: still being served)."""
    voucher = {
        "type": "voucher",
        "channelConfig": {
            "payer": "0x" + "11" * 20,
            "payerAuthorizer": "0x" + "11" * 20,
            "receiver": "0x" + "33" * 20,
            "receiverAuthorizer": "0x" + "44" * 20,
            "token": "0x" + "55" * 20,
            "withdrawDelay": 900,
            "salt": "0x" + "00" * 32,
        },
        "voucher": {
            "channelId": channel_id,
            "maxClaimableAmount": str(cumulative),
            "signature": "0x" + "ee" * 65,
        },
    }
    state = LedgerState.VERIFIED if amount is None else LedgerState.SETTLED
    return payment_row(
        receipt_id,
        key=f"batch-settlement:eip155:31337:{channel_id}:{cumulative}:{receipt_id}",
        scheme="batch-settlement",
        state=state,
        max_amount=maximum,
        amount=amount,
        payload_json=json.dumps({"x402Version": 2, "payload": voucher}),
        created_at=at,
        updated_at=at,
    )


def seeded(url: str) -> None:
    """Two channels, three answers on the first (one still being served), one on the
    second, an upto payment, and one claim of both channels."""

    async def seed() -> None:
        store = open_store(url)
        channels = channel_store_beside(store)
        try:
            rows = [
                session_row("s1", OPEN, 1_000, 1_000, 400, NOW - 30),
                session_row("s2", OPEN, 1_400, 1_000, 250, NOW - 20),
                payment_row("u1", created_at=NOW - 15, updated_at=NOW - 15),
                session_row("d1", DONE, 500, 500, 500, NOW - 12),
                session_row("s3", OPEN, 1_650, 1_000, None, NOW - 10),
            ]
            for row in rows:
                await store.save(row)
            records: list[ChannelRecord] = [
                channel(
                    OPEN,
                    balance=10_000,
                    charged=650,
                    claimed=400,
                    total_claimed=400,
                    voucher_max=1_400,
                    voucher_signature="0x" + "ee" * 65,
                    claim_transaction=CLAIM_TX,
                    claiming_until=AHEAD,
                    claim_failures=2,
                    claim_error="invalid_batch_settlement_evm_claim_simulation_failed",
                    serving="batch-settlement:s3",
                    serving_until=AHEAD,
                ),
                channel(
                    DONE,
                    balance=5_000,
                    charged=500,
                    claimed=500,
                    total_claimed=500,
                    claim_transaction=CLAIM_TX,
                    withdraw_requested_at=int(NOW) - 5,
                ),
            ]
            for record in records:
                assert await channels.put(record) is not None
            await channels.add_claim(
                ClaimRecord(
                    CLAIM_TX,
                    "eip155:31337",
                    "0x" + "33" * 20,
                    "0x" + "55" * 20,
                    (ClaimedChannel(OPEN, 400, 400), ClaimedChannel(DONE, 500, 500)),
                    NOW - 11,
                )
            )
        finally:
            await channels.aclose()
            await store.aclose()

    anyio.run(seed)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A seeded ledger and channel store: a SQLite file, or a Redis database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    else:
        base: str = request.getfixturevalue("redis_url")
        url = base.rsplit("/", 1)[0] + "/7"  # a database of its own: the CLI's default prefix
        Redis.from_url(url).flushdb()
    seeded(url)
    return url


def ledger(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    code = main(["ledger", *args, "--store", url])
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_channels_lists_balance_charges_claims_and_what_holds_each_one(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = ledger(capsys, store_url, "channels")

    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines[OPEN].split()[2:6] == ["10000", "650", "400", "250"]
    assert "busy until" in lines[OPEN]
    assert "claim refused x2: invalid_batch_settlement_evm_claim_simulation_failed" in lines[OPEN]
    assert f"last claim {CLAIM_TX}" in lines[OPEN]
    assert lines[DONE].split()[2:6] == ["5000", "500", "500", "0"]
    assert "withdrawal requested" in lines[DONE]


def test_channels_json_has_every_field_and_amounts_as_strings(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = ledger(capsys, store_url, "channels", "--json")

    assert code == 0
    by_id = {c["channel_id"]: c for c in json_lines(out)}
    opened = by_id[OPEN]
    assert (opened["balance"], opened["charged"], opened["claimed"]) == ("10000", "650", "400")
    assert opened["unclaimed"] == "250"
    assert (opened["busy"], opened["withdrawal_pending"], opened["claim_held"]) == (
        True,
        False,
        False,
    )
    assert opened["claim_backoff_until"] == pytest.approx(AHEAD)
    assert opened["claim_transaction"] == CLAIM_TX
    assert by_id[DONE]["withdrawal_pending"] is True
    assert set(dataclasses.asdict(channel()).keys()) <= set(opened)


def test_unclaimed_lists_only_the_channels_with_charges_to_claim(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = ledger(capsys, store_url, "channels", "--unclaimed", "--json")
    assert code == 0
    assert [c["channel_id"] for c in json_lines(out)] == [OPEN]


def test_a_channel_shows_its_charges_from_the_ledger_and_its_claims_from_the_log(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = ledger(capsys, store_url, "channel", OPEN.upper().replace("0X", "0x"), "--json")

    assert code == 0
    shown = json.loads(out)
    assert shown["channel"]["channel_id"] == OPEN
    charges = [(c["receipt_id"], c["amount"], c["cumulative"]) for c in shown["charges"]]
    assert charges == [("s3", None, None), ("s2", "250", "650"), ("s1", "400", "400")]
    assert shown["charges"][1]["maximum"] == "1000"
    assert shown["charges_complete"] is True
    assert shown["claims"] == [
        {
            "transaction": CLAIM_TX,
            "claimed_at": pytest.approx(NOW - 11),
            "amount": "400",
            "total_claimed": "400",
        }
    ]


def test_a_channel_as_text_and_the_newest_charges_only(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = ledger(capsys, store_url, "channel", OPEN, "--charges", "2")

    assert code == 0
    assert "charged                650" in out
    charges = out.split("charges, newest first:")[1].split("claims, newest first:")[0]
    assert [line.split()[2] for line in charges.strip().splitlines()[1:]] == ["s3", "s2"]
    assert CLAIM_TX in out.split("claims, newest first:")[1]


def test_an_unknown_channel_is_an_error(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = ledger(capsys, store_url, "channel", "0x" + "99" * 32)
    assert code == 1
    assert "no channel 0x9999" in err


def test_claims_lists_each_transaction_its_channels_and_amount(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = ledger(capsys, store_url, "claims")
    assert code == 0
    (line,) = out.splitlines()[1:]
    assert line.split()[2:] == [CLAIM_TX, "2", "900"]

    code, out, _ = ledger(capsys, store_url, "claims", "--json")
    (claim,) = json_lines(out)
    assert (claim["transaction"], claim["amount"]) == (CLAIM_TX, "900")
    assert [(c["channel_id"], c["amount"]) for c in claim["channels"]] == [
        (OPEN, "400"),
        (DONE, "500"),
    ]


def test_retry_of_a_channel_ends_its_refused_claims_backoff(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = ledger(capsys, store_url, "retry", OPEN)
    assert code == 0
    assert "backoff cleared" in out

    async def claimable() -> list[str]:
        store = open_store(store_url)
        channels = channel_store_beside(store)
        try:
            return [r.channel_id for r in await channels.claimable(time.time())]
        finally:
            await channels.aclose()
            await store.aclose()

    assert anyio.run(claimable) == [OPEN]  # the worker's next pass takes it
    code, out, _ = ledger(capsys, store_url, "retry", OPEN)
    assert (code, "not held back" in out) == (0, True)


def test_retry_of_a_claimed_channel_has_nothing_to_do(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = ledger(capsys, store_url, "retry", DONE)
    assert code == 1
    assert "nothing to claim" in err


def test_retry_of_a_claim_a_worker_holds_leaves_it_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"

    async def held() -> None:
        store = open_store(url)
        channels = channel_store_beside(store)
        try:
            record = channel(OPEN, charged=10, claiming="worker-1", claiming_until=AHEAD)
            assert await channels.put(record) is not None
        finally:
            await channels.aclose()
            await store.aclose()

    anyio.run(held)
    code, _, err = ledger(capsys, url, "retry", OPEN)
    assert code == 1
    assert "being claimed by worker-1" in err


def test_retry_of_a_session_charge_points_at_the_server_and_the_channel(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = ledger(
        capsys, store_url, "retry", "s3", "--facilitator-url", "http://127.0.0.1:9"
    )
    assert code == 1
    assert "settlement worker retries it" in err
    assert "ledger retry CHANNEL_ID" in err


def test_retry_of_a_payment_still_needs_the_facilitator(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = ledger(capsys, store_url, "retry", "u1")
    assert code == 2
    assert "--facilitator-url" in err


def test_a_channel_store_of_its_own_is_read_with_channel_store(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = f"sqlite:///{tmp_path / 'channels-elsewhere.sqlite3'}"
    code, out, _ = ledger(capsys, store_url, "channels", "--json", "--channel-store", empty)
    assert (code, out) == (0, "")


def test_only_rows_whose_own_voucher_is_on_the_channel_are_its_charges() -> None:
    """A row's key is not trusted alone: one naming the channel with another channel's
    voucher, or an unreadable payload, is not shown as the channel's charge (and does not
    stop the view)."""
    mine = session_row("m1", OPEN, 1_000, 1_000, 300, NOW)
    other = session_row("o1", DONE, 1_000, 1_000, 300, NOW)
    claims_mine = dataclasses.replace(other, key=mine.key)
    unreadable = dataclasses.replace(mine, payload_json='{"payload": {"type": "voucher"}}')
    not_json = dataclasses.replace(mine, payload_json="{")
    upto = dataclasses.replace(mine, scheme="upto")

    assert charge_of(mine, OPEN) is not None
    for row in (claims_mine, unreadable, not_json, upto):
        assert charge_of(row, OPEN) is None
