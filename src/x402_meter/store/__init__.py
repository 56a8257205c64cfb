"""Where payments are reserved and recorded: one interface, several backends."""

from x402_meter.store.base import LedgerState, PaymentRecord, PaymentStore
from x402_meter.store.memory import MemoryStore

__all__ = ["LedgerState", "MemoryStore", "PaymentRecord", "PaymentStore"]
