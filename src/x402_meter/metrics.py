"""Optional Prometheus metrics (``pip install 'x402-meter[metrics]'``).

    from x402_meter.metrics import PrometheusMetrics
    app.add_middleware(X402Meter, ..., metrics=PrometheusMetrics())
    app.mount("/metrics", prometheus_client.make_asgi_app())

Series: ``x402_meter_requests_total{outcome,reason}``, ``x402_meter_tokens_total{kind}``,
``x402_meter_settled_amount_total{asset,network}`` (atomic units),
``x402_meter_settlement_seconds`` (from body close to final state),
``x402_meter_settlements_pending`` (this process). Sessions (``batch-settlement``) add the
``x402_meter_session_*`` series (``SessionMetrics``; docs/operations.md lists them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from x402_meter.store import PaymentRecord

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class MeterMetrics(Protocol):
    """What the middleware reports; implement it to feed another metrics system."""

    def request(self, outcome: str, reason: str | None = None) -> None: ...

    def tokens(self, input_tokens: int, output_tokens: int) -> None: ...

    def settlement_started(self) -> None: ...

    def settlement_finished(self, record: PaymentRecord, seconds: float) -> None: ...


AdmissionCheck = Literal["local", "facilitator"]
"""Who checked an admitted voucher: this server alone, or the facilitator's ``/verify``."""


@runtime_checkable
class SessionMetrics(Protocol):
    """What sessions report, beside ``MeterMetrics``: a metrics object without these
    methods (one written before sessions) gets no session series. Amounts are atomic units;
    ``asset`` is the token's address."""

    def session_deposit(self, network: str, asset: str, amount: int) -> None:
        """A deposit landed before its answer was served."""
        ...

    def session_voucher(self, check: AdmissionCheck) -> None:
        """A voucher (not a deposit) was admitted, checked by ``check``."""
        ...

    def session_refused(self, reason: str) -> None:
        """A deposit or voucher was refused with ``reason``."""
        ...

    def session_charge(self, network: str, asset: str, amount: int) -> None:
        """An answer was charged ``amount`` on its channel (0 counts: the answer was paid)."""
        ...

    def session_claim(self, network: str, asset: str, channels: int, amount: int) -> None:
        """A claim transaction landed: ``channels`` channels, ``amount`` claimed in all."""
        ...

    def session_claim_failed(self, reason: str, channels: int) -> None:
        """A claim of ``channels`` channels failed (refused, or the facilitator unreachable):
        the charges stay to claim."""
        ...

    def session_sweep(self, network: str, asset: str) -> None:
        """A sweep of claimed funds to ``payTo`` landed."""
        ...

    def session_unclaimed(self, network: str, asset: str, amount: int) -> None:
        """What the channel store holds charged and not yet claimed (after a claims pass)."""
        ...

    def session_refund(self, network: str, asset: str, amount: int) -> None:
        """A cooperative refund landed: ``amount`` went back to the payer (the channel's
        charges were claimed in the same transaction)."""
        ...


class PrometheusSessionMetrics:
    """``SessionMetrics`` on prometheus_client: the ``{prefix}_session_*`` series."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        from prometheus_client import Counter, Gauge

        money = ["asset", "network"]
        series = f"{prefix}_session"
        self._deposits = Counter(
            f"{series}_deposits", "Session deposits landed", money, registry=registry
        )
        self._deposited = Counter(
            f"{series}_deposited_amount",
            "Amount deposited into sessions' channels, in atomic units",
            money,
            registry=registry,
        )
        self._vouchers = Counter(
            f"{series}_vouchers",
            "Vouchers admitted, by who checked them (local, facilitator)",
            ["check"],
            registry=registry,
        )
        self._refusals = Counter(
            f"{series}_refusals",
            "Deposits and vouchers refused, by reason",
            ["reason"],
            registry=registry,
        )
        self._charges = Counter(
            f"{series}_charges", "Answers charged on a channel", money, registry=registry
        )
        self._charged = Counter(
            f"{series}_charged_amount",
            "Amount charged on channels, in atomic units",
            money,
            registry=registry,
        )
        self._claims = Counter(
            f"{series}_claims", "Claim transactions landed", money, registry=registry
        )
        self._claimed_channels = Counter(
            f"{series}_claimed_channels",
            "Channels claimed (one per channel per claim transaction)",
            money,
            registry=registry,
        )
        self._claimed = Counter(
            f"{series}_claimed_amount",
            "Amount claimed on chain, in atomic units",
            money,
            registry=registry,
        )
        self._claim_failures = Counter(
            f"{series}_claim_failures",
            "Channels whose claim failed (refused, or the facilitator unreachable), by reason",
            ["reason"],
            registry=registry,
        )
        self._sweeps = Counter(
            f"{series}_sweeps", "Sweeps of claimed funds to payTo", money, registry=registry
        )
        self._unclaimed = Gauge(
            f"{series}_unclaimed_amount",
            "Charged and not yet claimed in the channel store (shared by its servers: take"
            " the max, not the sum), in atomic units",
            money,
            registry=registry,
            multiprocess_mode="max",
        )
        self._refunds = Counter(
            f"{series}_refunds", "Cooperative refunds landed", money, registry=registry
        )
        self._refunded = Counter(
            f"{series}_refunded_amount",
            "Amount refunded to payers by cooperative refunds, in atomic units",
            money,
            registry=registry,
        )

    def session_deposit(self, network: str, asset: str, amount: int) -> None:
        self._deposits.labels(asset, network).inc()
        self._deposited.labels(asset, network).inc(amount)

    def session_voucher(self, check: AdmissionCheck) -> None:
        self._vouchers.labels(check).inc()

    def session_refused(self, reason: str) -> None:
        self._refusals.labels(reason).inc()

    def session_charge(self, network: str, asset: str, amount: int) -> None:
        self._charges.labels(asset, network).inc()
        if amount:
            self._charged.labels(asset, network).inc(amount)

    def session_claim(self, network: str, asset: str, channels: int, amount: int) -> None:
        self._claims.labels(asset, network).inc()
        self._claimed_channels.labels(asset, network).inc(channels)
        if amount:
            self._claimed.labels(asset, network).inc(amount)

    def session_claim_failed(self, reason: str, channels: int) -> None:
        self._claim_failures.labels(reason).inc(channels)

    def session_sweep(self, network: str, asset: str) -> None:
        self._sweeps.labels(asset, network).inc()

    def session_unclaimed(self, network: str, asset: str, amount: int) -> None:
        self._unclaimed.labels(asset, network).set(amount)

    def session_refund(self, network: str, asset: str, amount: int) -> None:
        self._refunds.labels(asset, network).inc()
        if amount:
            self._refunded.labels(asset, network).inc(amount)


class PrometheusMetrics(PrometheusSessionMetrics):
    """``MeterMetrics`` and ``SessionMetrics`` on prometheus_client; pass ``registry`` to
    keep them off the global one."""

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
        super().__init__(target, prefix)
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
