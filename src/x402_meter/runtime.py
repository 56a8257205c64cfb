"""State shared by every request of one configured meter: store, facilitator, offers, worker.

A runtime is created explicitly and shared by passing it: ``X402Meter`` creates its own
unless given ``runtime=``; where a framework builds one middleware instance per route
(Litestar), the plugin creates one runtime and hands it to each route's meter, so an
authorization is single-use across all of a service's routes, not per route.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from x402_meter.channel_claims import ChannelClaims, ClaimPolicy
from x402_meter.config import MeterConfig
from x402_meter.errors import FacilitatorUnavailableError
from x402_meter.facilitator import FacilitatorClient
from x402_meter.pricing import TokenPrice
from x402_meter.protocol.offer import Offer
from x402_meter.request_body import BodyBudget
from x402_meter.routing import RouteSpec
from x402_meter.schemes import BUILT_IN, PaymentScheme
from x402_meter.schemes.batch_settlement import BatchSettlementScheme
from x402_meter.settlement import Settler
from x402_meter.store import (
    ChannelStore,
    PaymentStore,
    channel_store_beside,
    open_channel_store,
    open_store,
)

SUPPORTED_TTL_SECONDS: Final = 600.0
"""How long the facilitator's /supported answer (its settling addresses) is reused."""
OFFERS_KEPT: Final = 4096
"""Offers kept built, one per route, price and prompt length."""
STORE_ENV: Final = "X402_METER_STORE"
DEFAULT_STORE_URL: Final = "sqlite:///x402-meter.sqlite3"


def _store(configured: PaymentStore | str | None) -> PaymentStore:
    if configured is None:
        return open_store(os.environ.get(STORE_ENV) or DEFAULT_STORE_URL)
    if isinstance(configured, str):
        return open_store(configured)
    return configured


def _channel_store(configured: ChannelStore | str | None, store: PaymentStore) -> ChannelStore:
    if configured is None:
        return channel_store_beside(store)
    if isinstance(configured, str):
        return open_channel_store(configured)
    return configured


class MeterRuntime:
    """The store, the facilitator client, the settlement worker, the payment schemes and the
    offers of one meter."""

    def __init__(self, config: MeterConfig) -> None:
        self.config = config
        self.facilitator = config.facilitator or FacilitatorClient(
            config.facilitator_url,
            timeout=config.facilitator_timeout,
            headers=config.facilitator_headers,
            api_key=config.facilitator_api_key,
        )
        self.store: PaymentStore = _store(config.store)
        self.channels: ChannelStore | None = (
            _channel_store(config.channel_store, self.store)
            if BatchSettlementScheme.name in config.schemes
            else None
        )
        """Where sessions keep their channels (None: sessions are not offered)."""
        self.schemes: Mapping[str, PaymentScheme] = MappingProxyType(self._schemes())
        """The implementation of every scheme this meter offers (and of the built-in ones,
        for rows a store keeps from an earlier configuration), by name."""
        self.settler = Settler(
            self.facilitator,
            self.store,
            retry=config.retry,
            on_settled=config.on_settled,
            on_settlement_failed=config.on_settlement_failed,
            metrics=config.metrics,
            voided_payer_seconds=config.voided_payer_seconds,
            schemes=self.schemes,
        )
        self.claims = self._claims()
        """The claims worker of sessions (None: sessions are not offered); it runs beside
        the settlement sweeper."""
        self._offers: dict[tuple[RouteSpec, TokenPrice, int], Offer] = {}
        self._offers_fetched_at: float | None = None
        """When ``/supported`` was last read (``time.monotonic``); None: never, so the first
        request reads it. Never a number standing for "long ago": the monotonic clock starts
        near zero at boot, so no fixed value is old enough on a machine that just started."""
        self._kind_extras: dict[str, Mapping[str, Any]] = {}
        """What ``/supported`` says of each scheme on the network (its ``extra``)."""
        self._signers: frozenset[str] = frozenset()
        self._extensions: frozenset[str] = frozenset()
        self._lock = asyncio.Lock()
        self.body_budget = BodyBudget(config.max_buffered_bodies)

    def _schemes(self) -> dict[str, PaymentScheme]:
        """The stateless built-in schemes, and those that keep state for this meter."""
        schemes: dict[str, PaymentScheme] = dict(BUILT_IN)
        config = self.config
        if self.channels is not None:
            authorizer = config.session_receiver_authorizer
            schemes[BatchSettlementScheme.name] = BatchSettlementScheme(
                self.channels,
                withdraw_delay=config.session_withdraw_delay,
                deposit_multiple=config.session_deposit_multiple,
                state_ttl=config.session_state_ttl,
                receiver_authorizer=None if authorizer is None else authorizer.address,
                authorizer=authorizer,
            )
        return schemes

    def _claims(self) -> ChannelClaims | None:
        sessions = self.schemes.get(BatchSettlementScheme.name)
        if not isinstance(sessions, BatchSettlementScheme):
            return None
        config = self.config
        claims = ChannelClaims(
            sessions.channels,
            self.facilitator,
            policy=ClaimPolicy(
                interval=config.session_claim_interval,
                max_per_batch=config.session_claims_per_batch,
            ),
            authorizer=config.session_receiver_authorizer,
        )
        sessions.on_withdrawal = claims.wake  # claimed at once, before it can be finalized
        sessions.on_refunded = claims.claimed_by_refund  # swept to payTo
        self.settler.run_beside(claims)
        return claims

    def _offers_fresh(self) -> bool:
        fetched_at = self._offers_fetched_at
        return fetched_at is not None and time.monotonic() - fetched_at < SUPPORTED_TTL_SECONDS

    async def offer(self, spec: RouteSpec, price: TokenPrice, input_tokens: int = 0) -> Offer:
        """The route's offer at ``price`` for a prompt of ``input_tokens``; the first call
        (and one every few minutes) asks ``/supported``."""
        key = (spec, price, input_tokens)
        offer = self._offers.get(key)
        if offer is not None and self._offers_fresh():
            return offer
        async with self._lock:
            if not self._offers_fresh():
                await self._refresh()
            offer = self._offers.get(key)
            if offer is None:
                if len(self._offers) >= OFFERS_KEPT:  # prompts of many lengths: start over
                    self._offers.clear()
                offer = self._offers[key] = self._build(spec, price, input_tokens)
            return offer

    async def _refresh(self) -> None:
        supported = await self.facilitator.supported()
        network = self.config.network
        kinds = {kind.scheme: kind for kind in supported.kinds if kind.network == network}
        missing = [scheme for scheme in self.config.schemes if scheme not in kinds]
        if missing:
            raise FacilitatorUnavailableError(
                f"the facilitator does not support {', '.join(missing)} on {network}"
            )
        self._kind_extras = {name: dict(kind.extra or {}) for name, kind in kinds.items()}
        signers: set[str] = set()
        for pattern, addresses in supported.signers.items():
            if pattern in (network, "eip155:*"):
                signers.update(address.lower() for address in addresses)
        for extra in self._kind_extras.values():  # a kind's own settling address (upto's)
            address = extra.get("facilitatorAddress")
            if isinstance(address, str) and address:
                signers.add(address.lower())
        self._signers = frozenset(signers)
        self._extensions = frozenset(supported.extensions or ())
        self._offers.clear()
        self._offers_fetched_at = time.monotonic()

    def _build(self, spec: RouteSpec, price: TokenPrice, input_tokens: int) -> Offer:
        return Offer.build(
            self.config.terms_for(spec, price, input_tokens),
            kind_extras=self._kind_extras,
            facilitator_signers=self._signers,
            facilitator_extensions=self._extensions,
            schemes=self.schemes,
        )
