"""What an operator needs of a running gateway: health, metrics, access logs, the model list.

``Operations`` is the outermost layer (inside CORS): it answers ``/livez``, ``/healthz``
(readiness: the store answers and the facilitator supports the configured schemes),
``/metrics`` and ``GET /v1/models`` itself, and writes one JSON access-log line per other
request: method, path, status, upstream, the plan's model label, the upstream's outcome,
times, bytes, the receipt id. Nothing in a line comes from a header or a body, so no
credential can reach the log.
"""

from __future__ import annotations

import json
import logging
import os
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from x402_meter.gateway.config import (
    HEALTH_PATH,
    LIVE_PATH,
    METRICS_PATH,
    MODELS_PATH,
    GatewayConfig,
)
from x402_meter.gateway.labels import RequestLabels, current_labels
from x402_meter.metrics import PrometheusSessionMetrics
from x402_meter.pipeline.response_tap import RECEIPT_HEADER
from x402_meter.pricing import TokenPrice
from x402_meter.responses import send_json
from x402_meter.runtime import MeterRuntime
from x402_meter.store import PaymentRecord

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

access_log = logging.getLogger("x402_meter.gateway.access")

HEALTH_TIMEOUT: Final = 3.0
HEALTH_REUSED_FOR: Final = 2.0
"""Seconds a readiness answer is reused: probes in a burst ask the facilitator once."""
LOGGED_PATH_CHARS: Final = 200


class GatewayMetrics(PrometheusSessionMetrics):
    """``MeterMetrics`` labelled by upstream and model (both from the config), plus the
    upstream calls and the sessions' series (``x402_gateway_session_*``); on a registry of
    its own, served at ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        super().__init__(self.registry, "x402_gateway")
        labels = ["upstream", "model"]
        self._requests = Counter(
            "x402_gateway_requests",
            "Paid requests by outcome (challenged, refused, unavailable, served)",
            [*labels, "outcome", "reason"],
            registry=self.registry,
        )
        self._tokens = Counter(
            "x402_gateway_tokens", "Tokens metered", [*labels, "kind"], registry=self.registry
        )
        self._upstream = Counter(
            "x402_gateway_upstream_responses",
            "Upstream answers by outcome (2xx..5xx, timeout, unavailable, auth_failed)",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self._first_byte = Histogram(
            "x402_gateway_upstream_headers_seconds",
            "From sending a request upstream to its answer's headers",
            ["upstream"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
            registry=self.registry,
        )
        self._settled = Counter(
            "x402_gateway_settled_amount",
            "Amount settled, in the asset's atomic units",
            ["asset", "network"],
            registry=self.registry,
        )
        self._settlement = Histogram(
            "x402_gateway_settlement_seconds",
            "From body close to a final settlement state",
            ["state"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self._pending = Gauge(
            "x402_gateway_settlements_pending",
            "Settlements in flight in this process",
            registry=self.registry,
        )

    @staticmethod
    def _labels() -> tuple[str, str]:
        labels = current_labels.get()
        return ("", "") if labels is None else (labels.upstream, labels.model)

    def request(self, outcome: str, reason: str | None = None) -> None:
        self._requests.labels(*self._labels(), outcome, reason or "").inc()

    def tokens(self, input_tokens: int, output_tokens: int) -> None:
        upstream, model = self._labels()
        self._tokens.labels(upstream, model, "input").inc(input_tokens)
        self._tokens.labels(upstream, model, "output").inc(output_tokens)

    def settlement_started(self) -> None:
        self._pending.inc()

    def settlement_finished(self, record: PaymentRecord, seconds: float) -> None:
        self._pending.dec()
        self._settlement.labels(record.state.value).observe(seconds)
        if record.amount and record.state.value == "settled":
            self._settled.labels(record.asset, record.network).inc(record.amount)

    def upstream_answer(self, labels: RequestLabels) -> None:
        self._upstream.labels(labels.upstream, labels.model, labels.outcome).inc()
        if labels.upstream_seconds is not None:
            self._first_byte.labels(labels.upstream).observe(labels.upstream_seconds)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Readiness:
    """``/healthz``: can a paid request be served now? The store answers a read, and the
    facilitator lists every configured scheme on the network. Reused for a moment."""

    def __init__(self, runtime: MeterRuntime, config: GatewayConfig) -> None:
        self.runtime = runtime
        self.network = config.network
        self.schemes = config.schemes
        self._last: tuple[float, int, dict[str, str]] | None = None

    async def check(self) -> tuple[int, dict[str, str]]:
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < HEALTH_REUSED_FOR:
            return self._last[1], self._last[2]
        checks = {"store": await self._store(), "facilitator": await self._facilitator()}
        ready = all(value == "ok" for value in checks.values())
        answer = {"status": "ready" if ready else "unready", **checks}
        self._last = (now, 200 if ready else 503, answer)
        return self._last[1], answer

    async def _store(self) -> str:
        try:
            with anyio.fail_after(HEALTH_TIMEOUT):
                await self.runtime.store.get("x402-gateway-readiness")
        except TimeoutError:
            return "timeout"
        except Exception:
            logging.getLogger("x402_meter.gateway").warning("store check failed", exc_info=True)
            return "error"
        return "ok"

    async def _facilitator(self) -> str:
        try:
            with anyio.fail_after(HEALTH_TIMEOUT):
                supported = await self.runtime.facilitator.supported()
        except TimeoutError:
            return "timeout"
        except Exception:
            return "unreachable"
        offered = {kind.scheme for kind in supported.kinds if kind.network == self.network}
        return "ok" if set(self.schemes) <= offered else "schemes_missing"


def models_listing(config: GatewayConfig) -> dict[str, Any]:
    """``GET /v1/models``: every model (or pattern) served, with its prices per token and
    per million, the price per request, the output one payment covers, and its paths."""
    asset = config.asset
    data = []
    for upstream in config.upstreams:
        for plan in upstream.plans:
            paths = sorted(
                route.path
                for route in config.routes.values()
                if route.upstream is upstream and plan in route.plans.plans
            )
            for model in plan.models:
                data.append(
                    {
                        "id": model,
                        "object": "model",
                        "owned_by": upstream.name,
                        "pattern": model.endswith("*"),
                        "paths": paths,
                        "pricing": _pricing(plan.price, config.max_tokens),
                    }
                )
    return {
        "object": "list",
        "data": data,
        "payment": {
            "network": config.network,
            "asset": None if asset is None else asset.address,
            "schemes": list(config.schemes),
        },
    }


def _pricing(price: TokenPrice, max_tokens: int) -> dict[str, Any]:
    def text(value: Decimal) -> str:
        return f"{value.normalize():f}" if value else "0"

    return {
        "input_per_token": text(price.input),
        "output_per_token": text(price.output),
        "cached_input_per_token": text(price.cached_input),
        "input_per_million": text(price.input.scaleb(6)),
        "output_per_million": text(price.output.scaleb(6)),
        "cached_input_per_million": text(price.cached_input.scaleb(6)),
        "per_request": text(price.per_request),
        "max_tokens": price.max_tokens or max_tokens,
    }


class Operations:
    """The outermost layer: its own endpoints, the request's labels and the access log.
    (At shutdown the meter waits for the answers still unwinding, and their settlements.)"""

    def __init__(
        self,
        app: ASGIApp,
        config: GatewayConfig,
        readiness: Readiness,
        metrics: GatewayMetrics | None,
    ) -> None:
        self.app = app
        self.readiness = readiness
        self.metrics = metrics
        self.models = json.dumps(models_listing(config)).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD") and await self.own(scope["path"], send):
            return
        labels = RequestLabels()
        token = current_labels.set(labels)
        answer = _Answer(send)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, answer.send)
        finally:
            current_labels.reset(token)
            if self.metrics is not None and labels.outcome:
                self.metrics.upstream_answer(labels)
            self.log(scope, labels, answer, time.perf_counter() - started)

    async def own(self, path: str, send: Send) -> bool:
        """Answer one of the gateway's own endpoints; False if ``path`` is none of them."""
        if path == LIVE_PATH:
            await send_json(send, 200, {"status": "live"})
        elif path == HEALTH_PATH:
            status, body = await self.readiness.check()
            await send_json(send, status, body)
        elif path == MODELS_PATH:
            await _send_bytes(send, 200, self.models, b"application/json")
        elif path == METRICS_PATH and self.metrics is not None:
            content_type = b"text/plain; version=0.0.4; charset=utf-8"
            await _send_bytes(send, 200, self.metrics.exposition(), content_type)
        else:
            return False
        return True

    @staticmethod
    def log(scope: Scope, labels: RequestLabels, answer: _Answer, seconds: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        client = scope.get("client")
        line = {
            "event": "access",
            "method": scope["method"],
            "path": scope["path"][:LOGGED_PATH_CHARS],
            "status": answer.status,
            "upstream": labels.upstream or None,
            "model": labels.model or None,
            "upstream_outcome": labels.outcome or None,
            "upstream_seconds": None
            if labels.upstream_seconds is None
            else round(labels.upstream_seconds, 4),
            "seconds": round(seconds, 4),
            "bytes": answer.bytes,
            "receipt": answer.receipt,
            "client": client[0] if client else None,
            "worker": os.getpid(),
        }
        access_log.info(json.dumps(line, separators=(",", ":")))


class _Answer:
    """What was sent back: status, body bytes, the receipt id."""

    __slots__ = ("_send", "bytes", "receipt", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status: int | None = None
        self.bytes = 0
        self.receipt: str | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            for name, value in message.get("headers", ()):
                if name == RECEIPT_HEADER:
                    self.receipt = value.decode("latin-1").rstrip("/").rsplit("/", 1)[-1]
        elif message["type"] == "http.response.body":
            self.bytes += len(message.get("body", b""))
        await self._send(message)


async def _send_bytes(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
