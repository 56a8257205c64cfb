"""Optional Prometheus metrics (``pip install 'x402-meter[metrics]'``).

    from x402_meter.metrics import PrometheusMetrics
    app.add_middleware(X402Meter, ..., metrics=PrometheusMetrics())
    app.mount("/metrics", prometheus_client.make_asgi_app())

Series: ``x402_meter_requests_total{outcome,reason}``, ``x402_meter_tokens_total{kind}``,
``x402_meter_settled_amount_total{asset,network}`` (atomic units),
``x402_meter_settlement_seconds`` (from body close to final state),
``x402_meter_settlements_pending`` (this process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from x402_meter.store import PaymentRecord

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class MeterMetrics(Protocol):
    """What the middleware reports; implement it to feed another metrics system."""

    def request(self, outcome: str, reason: str | None = None) -> None: ...

    def tokens(self, input_tokens: int, output_tokens: int) -> None: ...

    def settlement_started(self) -> None: ...

    def settlement_finished(self, record: PaymentRecord, seconds: float) -> None: ...


class PrometheusMetrics:
    """``MeterMetrics`` on prometheus_client; pass ``registry`` to keep them off the global one."""

    def __init__(
        self, registry: CollectorRegistry | None = None, prefix: str = "x402_meter"
    ) -> None:
        try:
            from prometheus_client import REGISTRY, Counter, Gauge, Histogram
        except ImportError as exc:
            raise ImportError(
                "metrics need prometheus_client: pip install 'x402-meter[metrics]'"
            ) from exc
        target: CollectorRegistry = registry if registry is not None else REGISTRY
        self._requests = Counter(
            f"{prefix}_requests",
            "Metered requests by outcome",
            ["outcome", "reason"],
            registry=target,
        )
        self._tokens = Counter(f"{prefix}_tokens", "Tokens metered", ["kind"], registry=target)
        self._amount = Counter(
            f"{prefix}_settled_amount",
            "Amount settled, in the asset's atomic units",
            ["asset", "network"],
            registry=target,
        )
        self._latency = Histogram(
            f"{prefix}_settlement_seconds",
            "From body close to a final settlement state",
            ["state"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=target,
        )
        self._pending = Gauge(
            f"{prefix}_settlements_pending",
            "Settlements in flight in this process",
            registry=target,
        )

    def request(self, outcome: str, reason: str | None = None) -> None:
        self._requests.labels(outcome, reason or "").inc()

    def tokens(self, input_tokens: int, output_tokens: int) -> None:
        self._tokens.labels("input").inc(input_tokens)
        self._tokens.labels("output").inc(output_tokens)

    def settlement_started(self) -> None:
        self._pending.inc()

    def settlement_finished(self, record: PaymentRecord, seconds: float) -> None:
        self._pending.dec()
        self._latency.labels(record.state.value).observe(seconds)
        if record.amount and record.state.value == "settled":
            self._amount.labels(record.asset, record.network).inc(record.amount)
