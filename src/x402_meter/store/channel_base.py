"""The channel store: what a seller keeps of each batch-settlement channel (a session).

One record per channel id, written only by compare-and-set on its ``version``: a write that
raced another one fails, and the writer reads again. The record holds the channel's config,
the server's mirror of the channel on chain, what the server has charged on it and the
latest voucher that covers that charge (what a claim submits), the one request in flight
(the channel's single-flight lock, with a lease), and what has been claimed. Amounts are
integers in the token's atomic units.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    """One channel as the server knows it."""

    channel_id: str
    """``0x`` + 64 hex digits, lower case: the EIP-712 hash of the config."""
    network: str
    payer: str
    payer_authorizer: str
    receiver: str
    receiver_authorizer: str
    token: str
    withdraw_delay: int
    salt: str
    # -- the mirror of the channel on chain ------------------------------------------------
    balance: int = 0
    total_claimed: int = 0
    withdraw_requested_at: int = 0
    """Unix time a timed withdrawal was requested on chain (0: none)."""
    refund_nonce: int = 0
    synced_at: float = 0.0
    """Unix time the mirror was read (0: never)."""
    # -- what this server charged ----------------------------------------------------------
    charged: int = 0
    """The charged cumulative amount: every charge on the channel, added up."""
    voucher_max: int = 0
    """The latest voucher's ``maxClaimableAmount`` (at least ``charged``)."""
    voucher_signature: str = ""
    """The payer's signature of that voucher."""
    # -- the request in flight -------------------------------------------------------------
    serving: str | None = None
    """The key of the request being served on the channel (None: the channel is free)."""
    serving_until: float = 0.0
    """Unix time until which ``serving`` holds the channel."""
    last_charged: str | None = None
    """The key of the request charged last (charging it again changes nothing)."""
    # -- claims ----------------------------------------------------------------------------
    claimed: int = 0
    """The cumulative amount this server's claims have recorded on chain (at most
    ``charged``: a channel with ``charged`` above it has something to claim)."""
    claim_transaction: str | None = None
    """The transaction of the last claim that recorded ``claimed``."""
    claiming: str | None = None
    """The claims worker holding the channel's claim (None: no claim in flight)."""
    claiming_until: float = 0.0
    """Unix time until which ``claiming`` holds the claim; after a refused claim, the time
    before which no worker tries again (a backoff)."""
    claim_failures: int = 0
    """Claims of this channel refused in a row (0 after a claim lands)."""
    claim_error: str | None = None
    """Why the last claim of this channel was refused (None after a claim lands)."""
    # -- cooperative refunds ---------------------------------------------------------------
    refunded: int = 0
    """What cooperative refunds have returned to the payer from this channel, added up."""
    refund_transaction: str | None = None
    """The transaction of the last cooperative refund (it also claimed what was charged)."""
    # -- bookkeeping -----------------------------------------------------------------------
    version: int = 0
    """Bumped by every write (0: never written)."""
    created_at: float = 0.0
    updated_at: float = 0.0

    def as_stored(self, now: float) -> ChannelRecord:
        """This record as a compare-and-set writes it at ``now``: the id in lower case, the
        version one more, created now if it is new, updated now."""
        return dataclasses.replace(
            self,
            channel_id=self.channel_id.lower(),
            version=self.version + 1,
            created_at=self.created_at or now,
            updated_at=now,
        )

    def busy(self, now: float) -> bool:
        """Whether a request holds the channel at ``now``."""
        return self.serving is not None and self.serving_until > now

    def claimable(self, now: float) -> bool:
        """Whether the channel has charges not yet claimed and no claim of it is held (or
        backed off) at ``now``: what ``ChannelStore.claimable`` lists."""
        return self.charged > self.claimed and self.claiming_until <= now


class ChannelStore(Protocol):
    """Where channel records live; shared by every worker that serves the same seller."""

    async def get(self, channel_id: str) -> ChannelRecord | None:
        """The channel's record (``channel_id`` in any case), or None."""
        ...

    async def put(self, record: ChannelRecord) -> ChannelRecord | None:
        """Write ``record`` if the stored one still has ``record.version`` (0: none stored).

        Returns the record as stored (its version one more), or None when another write came
        first (read again and decide again).
        """
        ...

    async def claimable(self, now: float, limit: int = 100) -> list[ChannelRecord]:
        """At most ``limit`` records that are ``claimable(now)``: charged beyond what was
        claimed, their claim free; the one free the longest first (``claiming_until``)."""
        ...

    async def list(self, limit: int = 100, offset: int = 0) -> list[ChannelRecord]:
        """Records, the most recently written first."""
        ...

    async def aclose(self) -> None: ...
