"""What a session's server knows of a channel beyond its record: the chain's snapshot as the
facilitator reports it, and the channels whose last answer this process is charging."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio

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
