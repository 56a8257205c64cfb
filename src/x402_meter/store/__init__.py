"""Where payments are reserved and recorded: one interface, several backends.

``MemoryStore`` (tests), ``SQLiteStore`` (the embedded default; several workers on one
host), ``RedisStore`` (many hosts; needs the ``redis`` extra). ``open_store(url)`` picks one.
Sessions keep their channels in a ``ChannelStore``: ``MemoryChannelStore``,
``SQLiteChannelStore`` or ``RedisChannelStore`` (``x402_meter.store.channel_redis``, the
``redis`` extra); ``channel_store_beside(store)`` picks the one that goes with a store.
"""

from x402_meter.store.base import (
    OPEN_STATES,
    LedgerState,
    PaymentRecord,
    PaymentStore,
    VoidedPayer,
)
from x402_meter.store.channel_base import (
    ChannelRecord,
    ChannelStore,
    ClaimedChannel,
    ClaimRecord,
)
from x402_meter.store.channel_memory import MemoryChannelStore
from x402_meter.store.channel_sqlite import SQLiteChannelStore
from x402_meter.store.memory import MemoryStore
from x402_meter.store.sqlite import SQLiteStore
from x402_meter.store.urls import channel_store_beside, open_channel_store, open_store

__all__ = [
    "OPEN_STATES",
    "ChannelRecord",
    "ChannelStore",
    "ClaimRecord",
    "ClaimedChannel",
    "LedgerState",
    "MemoryChannelStore",
    "MemoryStore",
    "PaymentRecord",
    "PaymentStore",
    "SQLiteChannelStore",
    "SQLiteStore",
    "VoidedPayer",
    "channel_store_beside",
    "open_channel_store",
    "open_store",
]
