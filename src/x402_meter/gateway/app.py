"""The gateway, assembled: CORS → operations → policy → ``X402Meter`` → forwarder."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from x402_meter.cors import ALLOW_HEADERS, EXPOSE_HEADERS
from x402_meter.errors import RequestRefusedError
from x402_meter.facilitator import FacilitatorClient
from x402_meter.gateway.config import GatewayConfig
from x402_meter.gateway.forwarder import Forwarder
from x402_meter.gateway.operations import GatewayMetrics, Operations, Readiness
from x402_meter.gateway.policy import RequestPolicy
from x402_meter.middleware import X402Meter
from x402_meter.pricing import PricedRequest, PriceFunction, TokenPrice
from x402_meter.store import PaymentStore


def plan_prices(config: GatewayConfig) -> PriceFunction:
    """The meter's price model: the price of the plan of the request's route and model.

    The policy has already refused a request without one; this refuses it again (400), so
    that nothing reaches an upstream at a price it was not configured for. A session's
    refund (and its probe) names no model and reaches no upstream: its offer is made at the
    route's dearest plan (only the offer's channel terms matter to a refund).
    """
    routes = config.routes

    def price(request: PricedRequest) -> TokenPrice:
        route = routes.get(request.path)
        if route is None:
            raise RequestRefusedError("not_found", "no such endpoint here", status_code=404)
        if request.model is None and request.body is None:
            return route.plans.dearest  # a refund's offer: the policy passes no other
        match = route.plans.match(request.model) if request.model else None
        if match is None:
            raise route.plans.refusal(request.model)
        return match.plan.price

    return price


class Gateway:
    """The gateway's ASGI app, and its parts for those who need them (tests, the bench)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        store: PaymentStore | str | None = None,
        facilitator: FacilitatorClient | None = None,
        upstream_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``store`` and ``facilitator`` replace what the config names; the upstreams are
        called through ``upstream_transport`` if given (a proxy, mTLS, an in-process app)."""
        self.config = config
        self.forwarder = Forwarder(config, transport=upstream_transport)
        self.metrics = GatewayMetrics() if config.metrics else None
        options: dict[str, Any] = {
            **config.meter_options(),
            "price_per_token": plan_prices(config),
            "metrics": self.metrics,
        }
        if store is not None:
            options["store"] = store
        if facilitator is not None:
            options["facilitator"] = facilitator
        self.meter = X402Meter(self.forwarder, **options)
        self.readiness = Readiness(self.meter.runtime, config)
        refund_header_bytes = None
        if self.meter.runtime.channels is not None:  # sessions on: refunds come here
            refund_header_bytes = self.meter.config.max_payment_header_bytes
        policy = RequestPolicy(self.meter, config, refund_header_bytes=refund_header_bytes)
        app: ASGIApp = Operations(policy, config, self.readiness, self.metrics)
        if config.cors_origins:
            # Outermost: preflights are answered here; the meter's 402s get the headers too.
            app = CORSMiddleware(
                app,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=[*ALLOW_HEADERS, "content-type", "anthropic-version"],
                expose_headers=list(EXPOSE_HEADERS),
            )
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)
