"""What a session's server knows of a channel beyond its record: the chain's snapshot as the
facilitator reports it, the channels whose last answer this process is charging, and each
channel's record as this process last saw it."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

from x402_meter.protocol.amounts import NotCanonicalUintError, parse_uint
from x402_meter.store import ChannelRecord


def _uint(value: Any) -> int | None:
    """A uint the facilitator sent as a decimal string or a JSON integer; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    try:
        return parse_uint(value)
    except NotCanonicalUintError:
        return None


@dataclass(frozen=True, slots=True)
class ChainSnapshot:
    """A channel on chain: its balance, what was claimed, a pending withdrawal, the refund
    nonce (what the spec has the facilitator return from ``/verify`` and ``/settle``)."""

    balance: int
    total_claimed: int
    withdraw_requested_at: int
    refund_nonce: int

    @classmethod
    def read(cls, extra: Mapping[str, Any] | None) -> ChainSnapshot | None:
        """From a ``/verify`` answer's ``extra`` (or a ``/settle`` answer's
        ``extra.channelState``); None when it lacks the balance or ``totalClaimed`` (the
        spec: without ``totalClaimed`` the request is refused)."""
        if not extra:
            return None
        balance, claimed = _uint(extra.get("balance")), _uint(extra.get("totalClaimed"))
        if balance is None or claimed is None:
            return None
        return cls(
            balance,
            claimed,
            _uint(extra.get("withdrawRequestedAt", 0)) or 0,
            _uint(extra.get("refundNonce", 0)) or 0,
        )

    @classmethod
    def of(cls, record: ChannelRecord) -> ChainSnapshot:
        """The record's mirror."""
        return cls(
            record.balance,
            record.total_claimed,
            record.withdraw_requested_at,
            record.refund_nonce,
        )

    def mirrored(self, synced_at: float) -> dict[str, Any]:
        """The record's fields that mirror this snapshot, read at ``synced_at``."""
        return {
            "balance": self.balance,
            "total_claimed": self.total_claimed,
            "withdraw_requested_at": self.withdraw_requested_at,
            "refund_nonce": self.refund_nonce,
            "synced_at": synced_at,
        }


def channel_state(channel_id: str, chain: ChainSnapshot, charged: int) -> dict[str, Any]:
    """``extra.channelState`` as the spec writes it (in 402s and ``PAYMENT-RESPONSE``)."""
    return {
        "channelId": channel_id,
        "balance": str(chain.balance),
        "totalClaimed": str(chain.total_claimed),
        "withdrawRequestedAt": chain.withdraw_requested_at,
        "refundNonce": str(chain.refund_nonce),
        "chargedCumulativeAmount": str(charged),
    }


class ChargingChannels:
    """The channels whose last answer this process has finished and is charging.

    A client may send its next request the moment an answer ends, before the charge of that
    answer has released the channel; the new request waits for that charge (milliseconds)
    instead of being refused as concurrent. A request that finds its channel held by an
    answer still running is refused at once.
    """

    def __init__(self) -> None:
        self._charging: dict[str, asyncio.Event] = {}

    def begin(self, channel_id: str) -> None:
        self._charging.setdefault(channel_id, asyncio.Event())

    def end(self, channel_id: str) -> None:
        event = self._charging.pop(channel_id, None)
        if event is not None:
            event.set()

    def charging(self, channel_id: str) -> bool:
        """Whether this process is charging ``channel_id``'s last answer."""
        return channel_id in self._charging

    async def wait(self, channel_id: str, seconds: float) -> bool:
        """Wait, at most ``seconds``, for the charge of ``channel_id`` in this process;
        False at once when none is going on."""
        event = self._charging.get(channel_id)
        if event is None:
            return False
        with anyio.move_on_after(seconds):
            await event.wait()
        return event.is_set()


class RecentChannels:
    """The record of each channel as this process last read or wrote it (a bounded LRU),
    so that the hot path can skip a store read.

    Only a hint, never trusted alone: a request that decides on it goes on only through a
    compare-and-set on the record's version, which fails if anyone wrote the channel since
    (and then the request reads the store and decides again); nothing is refused on it.
    A channel is ``trusted`` for that once a read from the store found it as this process
    had left it, and stops being trusted when such a compare-and-set fails: where another
    process writes the channel too, requests read first, as if there were no hint (a
    failed guess costs a store round trip)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._records: OrderedDict[str, tuple[ChannelRecord, bool]] = OrderedDict()

    def get(self, channel_id: str) -> ChannelRecord | None:
        """The channel as this process last saw it, whether trusted or not."""
        entry = self._records.get(channel_id)
        return None if entry is None else entry[0]

    def trusted(self, channel_id: str) -> ChannelRecord | None:
        """The channel as this process last saw it, if no other process seems to write it."""
        entry = self._records.get(channel_id)
        return entry[0] if entry is not None and entry[1] else None

    def read(self, record: ChannelRecord | None) -> None:
        """``record`` was read from the store: trusted if it is what this process left."""
        if record is not None:
            left = self.get(record.channel_id)
            self._keep(record, left is not None and left.version == record.version)

    def wrote(self, record: ChannelRecord | None) -> None:
        """``record`` was written by this process (a compare-and-set that won)."""
        if record is not None:
            entry = self._records.get(record.channel_id)
            self._keep(record, entry is not None and entry[1])

    def distrust(self, channel_id: str) -> None:
        """A compare-and-set on this process's view failed: another process wrote."""
        entry = self._records.get(channel_id)
        if entry is not None:
            self._records[channel_id] = (entry[0], False)

    def _keep(self, record: ChannelRecord, trusted: bool) -> None:
        self._records[record.channel_id] = (record, trusted)
        self._records.move_to_end(record.channel_id)
        if len(self._records) > self.size:
            self._records.popitem(last=False)


def checksummed_config(channel: ChannelConfig | ChannelRecord) -> ChannelConfig:
    """The channel's config (from a payload's config or a stored record) with its
    addresses checksummed, as the SDK writes them in claims and refunds."""
    return ChannelConfig(
        payer=Web3.to_checksum_address(channel.payer),
        payer_authorizer=Web3.to_checksum_address(channel.payer_authorizer),
        receiver=Web3.to_checksum_address(channel.receiver),
        receiver_authorizer=Web3.to_checksum_address(channel.receiver_authorizer),
        token=Web3.to_checksum_address(channel.token),
        withdraw_delay=channel.withdraw_delay,
        salt=channel.salt,
    )


class DepositTransactions:
    """The transaction of each deposit admission just settled, by the request's key, until
    the request's ledger row takes it (at once, in this process): a bounded map, so that a
    request that never gets a row leaves nothing behind for long."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._transactions: OrderedDict[str, str] = OrderedDict()

    def put(self, key: str, transaction: str) -> None:
        self._transactions[key] = transaction
        if len(self._transactions) > self.size:
            self._transactions.popitem(last=False)

    def take(self, key: str) -> str | None:
        return self._transactions.pop(key, None)
