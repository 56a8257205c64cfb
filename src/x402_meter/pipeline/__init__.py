"""One paid request as a short pipeline (``PaidExchange``): admission, the request body,
the response tap, the heartbeat, the ledger records, receipts. docs/design/architecture.md
draws it."""

from x402_meter.pipeline.exchange import PaidAnswer, PaidExchange

__all__ = ["PaidAnswer", "PaidExchange"]
