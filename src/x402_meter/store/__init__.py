"""Where payments are reserved and recorded: one interface, several backends.

``MemoryStore`` (tests), ``SQLiteStore`` (the embedded default; several workers on one
host), ``RedisStore`` (many hosts; needs the ``redis`` extra). ``open_store(url)`` picks one.
"""

from x402_meter.store.base import (
    OPEN_STATES,
    LedgerState,
    PaymentRecord,
    PaymentStore,
    VoidedPayer,
)
from x402_meter.store.memory import MemoryStore
from x402_meter.store.sqlite import SQLiteStore
from x402_meter.store.urls import open_store

__all__ = [
    "OPEN_STATES",
    "LedgerState",
    "MemoryStore",
    "PaymentRecord",
    "PaymentStore",
    "SQLiteStore",
    "VoidedPayer",
    "open_store",
]
