"""The sessions' part of ``x402-meter ledger``: channels, their charges, the claims.

The channel store keeps one record per channel and a log of the claim transactions; the
charges are the ledger's own rows (one per answer served on a channel, with its time,
receipt, cost and voucher), so a channel's history is read from the ledger rather than
kept a second time in the channel's record, which every charge rewrites. Amounts are
atomic units, printed as integers and, in JSON, as decimal strings (uint256 is no JSON
number).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, TextIO

from x402_meter.errors import PaymentError
from x402_meter.schemes.batch_settlement import BatchSettlementScheme, charged_after
from x402_meter.schemes.channel_payload import read_channel_payment
from x402_meter.store import (
    ChannelRecord,
    ChannelStore,
    ClaimRecord,
    LedgerState,
    PaymentRecord,
    PaymentStore,
)

CHANNEL_ID: Final = re.compile(r"0x[0-9a-fA-F]{64}")
LEDGER_PAGE: Final = 500
LEDGER_SCANNED: Final = 200_000
"""Ledger rows read, newest first, looking for one channel's charges (a bound on the cost
of ``ledger channel`` on a large ledger; the JSON says when it was reached)."""
CLAIMS_SCANNED: Final = 1_000
"""Claim log entries read, newest first, looking for one channel's claims."""
_AMOUNTS: Final = ("balance", "total_claimed", "refund_nonce", "charged", "voucher_max", "claimed")


def is_channel_id(text: str) -> bool:
    """Whether ``text`` is a channel id (``0x`` and 64 hex digits), not a receipt id."""
    return bool(CHANNEL_ID.fullmatch(text))


def channel_json(record: ChannelRecord, now: float) -> dict[str, Any]:
    """Every field of the record, amounts as strings, with what an operator asks first:
    what is unclaimed, whether a withdrawal is pending, whether a request holds it."""
    fields = dataclasses.asdict(record)
    for name in _AMOUNTS:
        fields[name] = str(fields[name])
    fields["unclaimed"] = str(record.charged - record.claimed)
    fields["withdrawal_pending"] = bool(record.withdraw_requested_at)
    fields["busy"] = record.busy(now)
    fields["claim_held"] = record.claiming is not None and record.claiming_until > now
    fields["claim_backoff_until"] = (
        record.claiming_until
        if record.claiming is None and record.claiming_until > now and record.claim_error
        else None
    )
    return fields


@dataclass(frozen=True, slots=True)
class Charge:
    """One answer's charge on a channel, read from its ledger row."""

    receipt_id: str
    state: str
    at: float
    """When the row was last written: the charge's time once it is final."""
    amount: int | None
    """The charge (None while the answer is still served)."""
    maximum: int
    """The voucher's increment: the most the answer could cost."""
    cumulative: int | None
    """The channel's charged cumulative once this charge was added (None until final)."""
    input_tokens: int
    output_tokens: int

    def as_json(self) -> dict[str, Any]:
        return {
            "receipt_id": self.receipt_id,
            "state": self.state,
            "at": self.at,
            "amount": None if self.amount is None else str(self.amount),
            "maximum": str(self.maximum),
            "cumulative": None if self.cumulative is None else str(self.cumulative),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


def charge_of(row: PaymentRecord, channel_id: str) -> Charge | None:
    """The charge ``row`` made on ``channel_id`` (None: the row is not one of its answers)."""
    if row.scheme != BatchSettlementScheme.name or f":{channel_id}:" not in row.key.lower():
        return None
    try:
        payment = read_channel_payment(json.loads(row.payload_json)["payload"])
    except (PaymentError, ValueError, KeyError, TypeError):
        return None
    if payment.channel_id != channel_id:
        return None
    final = row.state in (LedgerState.SETTLED, LedgerState.NOT_CHARGED)
    return Charge(
        receipt_id=row.receipt_id,
        state=row.state.value,
        at=row.updated_at,
        amount=row.amount,
        maximum=row.max_amount,
        cumulative=charged_after(row, payment) if final else None,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
    )


async def charges_of(store: PaymentStore, channel_id: str, limit: int) -> tuple[list[Charge], bool]:
    """The channel's last ``limit`` charges, newest first, and whether the whole ledger was
    read (False: ``LEDGER_SCANNED`` rows were, and older charges may exist)."""
    found: list[Charge] = []
    async for row in _ledger_rows(store):
        if row is None:
            return found, False
        charge = charge_of(row, channel_id)
        if charge is not None:
            found.append(charge)
            if len(found) >= limit:
                break
    return found, True


async def _ledger_rows(store: PaymentStore) -> AsyncIterator[PaymentRecord | None]:
    """The ledger's rows, newest first; None once ``LEDGER_SCANNED`` were read."""
    offset = 0
    while offset < LEDGER_SCANNED:
        rows = await store.list(None, limit=LEDGER_PAGE, offset=offset)
        for row in rows:
            yield row
        if len(rows) < LEDGER_PAGE:
            return
        offset += LEDGER_PAGE
    yield None


async def list_channels(
    channels: ChannelStore, out: TextIO, *, limit: int, unclaimed: bool, as_json: bool
) -> int:
    """``ledger channels``: the most recently written first (``unclaimed``: only those with
    charges to claim, the longest waiting first)."""
    now = time.time()
    records = (
        await channels.claimable(math.inf, limit=limit)
        if unclaimed
        else await channels.list(limit=limit)
    )
    if as_json:
        for record in records:
            out.write(json.dumps(channel_json(record, now)) + "\n")
        return 0
    out.write(
        f"{'channel':<66} {'payer':<42} {'balance':>12} {'charged':>12} {'claimed':>12}"
        f" {'unclaimed':>12}  state\n"
    )
    for record in records:
        out.write(
            f"{record.channel_id:<66} {record.payer:<42} {record.balance:>12}"
            f" {record.charged:>12} {record.claimed:>12} {record.charged - record.claimed:>12}"
            f"  {_state(record, now)}\n"
        )
    return 0


def _state(record: ChannelRecord, now: float) -> str:
    """What is going on with a channel, in a few words."""
    notes = []
    if record.busy(now):
        notes.append(f"busy until {_time(record.serving_until)}")
    if record.withdraw_requested_at:
        notes.append(f"withdrawal requested {_time(record.withdraw_requested_at)}")
    if record.claiming is not None and record.claiming_until > now:
        notes.append(f"claim held by {record.claiming}")
    elif record.claim_error:
        notes.append(
            f"claim refused x{record.claim_failures}: {record.claim_error}"
            f" (next try {_time(max(record.claiming_until, now))})"
        )
    if record.claim_transaction:
        notes.append(f"last claim {record.claim_transaction}")
    return "; ".join(notes) or "-"


def _shown(name: str, value: object) -> str:
    """A field as the text view shows it: times (``*_at``, ``*_until``) in UTC."""
    if value is None or value == "":
        return ""
    if name.endswith(("_at", "_until")) and isinstance(value, int | float):
        return f"{_time(value)} UTC" if value else "-"
    return str(value)


def _time(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


async def show_channel(
    channels: ChannelStore,
    store: PaymentStore,
    channel_id: str,
    out: TextIO,
    err: TextIO,
    *,
    charges: int,
    as_json: bool,
) -> int:
    """``ledger channel ID``: the record, its last ``charges`` charges, and its claims in
    the claim log's recent entries."""
    record = await channels.get(channel_id)
    if record is None:
        err.write(f"no channel {channel_id}\n")
        return 1
    now = time.time()
    found, complete = await charges_of(store, record.channel_id, charges)
    claims = [
        claim
        for claim in await channels.claims(limit=CLAIMS_SCANNED)
        if any(c.channel_id == record.channel_id for c in claim.channels)
    ]
    if as_json:
        document = {
            "channel": channel_json(record, now),
            "charges": [charge.as_json() for charge in found],
            "charges_complete": complete or len(found) >= charges,
            "claims": [_claim_of(claim, record.channel_id) for claim in claims],
        }
        out.write(json.dumps(document, indent=2) + "\n")
        return 0
    for name, value in channel_json(record, now).items():
        out.write(f"{name:<22} {_shown(name, value)}\n")
    out.write(
        f"\ncharges, newest first:\n{'at':<20} {'receipt':<26} {'state':<11}"
        f" {'amount':>12} {'maximum':>12} {'cumulative':>12}\n"
    )
    for charge in found:
        amount = "" if charge.amount is None else str(charge.amount)
        cumulative = "" if charge.cumulative is None else str(charge.cumulative)
        out.write(
            f"{_time(charge.at):<20} {charge.receipt_id:<26} {charge.state:<11}"
            f" {amount:>12} {charge.maximum:>12} {cumulative:>12}\n"
        )
    if not complete:
        out.write(f"(only the newest {LEDGER_SCANNED} ledger rows were read)\n")
    out.write(f"\nclaims, newest first:\n{'claimed at':<20} {'transaction':<66} {'amount':>12}\n")
    for claim in claims:
        mine = _claim_of(claim, record.channel_id)
        out.write(f"{_time(claim.claimed_at):<20} {claim.transaction:<66} {mine['amount']:>12}\n")
    return 0


def _claim_of(claim: ClaimRecord, channel_id: str) -> dict[str, Any]:
    """One channel's part of a claim transaction."""
    (row,) = [c for c in claim.channels if c.channel_id == channel_id]
    return {
        "transaction": claim.transaction,
        "claimed_at": claim.claimed_at,
        "amount": str(row.amount),
        "total_claimed": str(row.total_claimed),
    }


async def list_claims(channels: ChannelStore, out: TextIO, *, limit: int, as_json: bool) -> int:
    """``ledger claims``: the claim transactions, newest first."""
    claims = await channels.claims(limit=limit)
    if as_json:
        for claim in claims:
            out.write(json.dumps(claim.as_json()) + "\n")
        return 0
    out.write(f"{'claimed at':<20} {'transaction':<66} {'channels':>8} {'amount':>14}\n")
    for claim in claims:
        out.write(
            f"{_time(claim.claimed_at):<20} {claim.transaction:<66} {len(claim.channels):>8}"
            f" {claim.amount:>14}\n"
        )
    return 0


async def retry_claim(channels: ChannelStore, channel_id: str, out: TextIO, err: TextIO) -> int:
    """``ledger retry CHANNEL_ID``: end a refused claim's backoff, so that the claims worker
    (which runs in the server, with the receiver authorizer's key) claims the channel in its
    next pass. A claim held by a worker right now is left alone."""
    for _ in range(5):
        record = await channels.get(channel_id)
        if record is None:
            err.write(f"no channel {channel_id}\n")
            return 1
        now = time.time()
        if record.charged <= record.claimed:
            err.write(f"channel {record.channel_id} has nothing to claim\n")
            return 1
        if record.claiming is not None and record.claiming_until > now:
            err.write(f"channel {record.channel_id} is being claimed by {record.claiming}\n")
            return 1
        if record.claiming_until <= now:
            out.write(
                f"{record.channel_id}: {record.charged - record.claimed} to claim, not held"
                " back: the claims worker claims it in its next pass\n"
            )
            return 0
        freed = dataclasses.replace(record, claiming=None, claiming_until=0.0)
        if await channels.put(freed) is not None:
            out.write(
                f"{record.channel_id}: backoff cleared ({record.claim_error}); the claims"
                " worker claims it in its next pass\n"
            )
            return 0
    err.write(f"channel {channel_id} kept changing: try again\n")
    return 1
