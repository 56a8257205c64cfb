"""The middleware's configuration, validated and compiled once."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Required, TypedDict

from x402.http.constants import DEFAULT_FACILITATOR_URL
from x402.mechanisms.evm.constants import PERMIT2_DEADLINE_BUFFER
from x402.mechanisms.evm.v1.constants import V1_NETWORK_CHAIN_IDS

from x402_meter.assets import Asset, default_asset
from x402_meter.errors import ConfigurationError
from x402_meter.facilitator import FacilitatorClient
from x402_meter.metering import MeterFactory, auto_meter
from x402_meter.metrics import MeterMetrics
from x402_meter.pricing import PriceInput, PriceModel, Tariff, TokenPrice, as_price_model
from x402_meter.protocol.headers import DEFAULT_MAX_HEADER_BYTES
from x402_meter.protocol.offer import SCHEMES, PaymentTerms, Scheme
from x402_meter.routing import RouteSpec
from x402_meter.settlement import RetryPolicy, SettlementHook
from x402_meter.store import PaymentStore

_ADDRESS: Final = re.compile(r"0x[0-9a-fA-F]{40}")
_CAIP2_EVM: Final = re.compile(r"eip155:[1-9][0-9]*")
_API_KEY: Final = re.compile(r"[\x21-\x7e]+")

FacilitatorHeaders = Mapping[str, str] | Callable[[], Mapping[str, str]]
CapPolicy = Literal["end", "finish"]
"""When a stream's count reaches the authorized maximum: end it there, or let it finish
(the charge stays capped at the maximum either way)."""


class MeterOptions(TypedDict, total=False):
    """``X402Meter``'s keyword arguments; ``MeterConfig.create`` documents and checks them."""

    pay_to: Required[str]
    price_per_token: Required[PriceModel | PriceInput]
    network: str
    facilitator_url: str
    asset: Asset | None
    max_tokens: int
    routes: Sequence[str] | None
    schemes: Sequence[Scheme]
    max_timeout_seconds: int
    store: PaymentStore | str | None
    meter: MeterFactory
    receipts_path: str
    settle_before_response: bool | None
    facilitator_headers: FacilitatorHeaders | None
    facilitator_api_key: str | None
    facilitator_timeout: float
    max_payment_header_bytes: int
    retry_after_seconds: int
    description: str | None
    facilitator: FacilitatorClient | None
    on_settled: SettlementHook | None
    on_settlement_failed: SettlementHook | None
    settlement_retry: RetryPolicy | None
    metrics: MeterMetrics | None
    checkpoint_every: float
    shape_requests: bool
    on_cap: CapPolicy
    max_request_body: int
    request_body_timeout: float
    max_input_tokens: int | None
    max_buffered_bodies: int
    recheck_every: float
    expiry_margin: float
    voided_payer_seconds: float


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """Everything ``X402Meter`` was configured with, checked.

    Hashable: middleware instances with equal configs share one runtime.
    """

    pay_to: str
    network: str
    asset: Asset
    price: PriceModel
    max_tokens: int
    facilitator_url: str
    schemes: tuple[Scheme, ...]
    max_timeout_seconds: int
    store: PaymentStore | str | None
    """A store, a store URL, or None: ``$X402_METER_STORE``, else ``sqlite:///x402-meter.sqlite3``."""
    meter: MeterFactory
    receipts_path: str
    settle_before_response: bool | None
    """Hold non-streamed answers until settled (``None``: for ``exact`` payments only)."""
    facilitator_headers: tuple[tuple[str, str], ...] | Callable[[], Mapping[str, str]] | None
    facilitator_api_key: str | None = field(repr=False)
    """Sent as ``Authorization: Bearer``; kept out of ``repr`` so that it is never logged."""
    facilitator_timeout: float
    max_payment_header_bytes: int
    retry_after_seconds: int
    description: str | None
    facilitator: FacilitatorClient | None
    routes: tuple[str, ...] | None
    on_settled: SettlementHook | None
    on_settlement_failed: SettlementHook | None
    settlement_retry: RetryPolicy
    metrics: MeterMetrics | None
    checkpoint_every: float
    """Seconds between checkpoints of a stream's running count (0: before every chunk)."""
    shape_requests: bool
    on_cap: CapPolicy
    max_request_body: int
    """Bytes a metered request body may have (413 ``request_too_large`` above)."""
    request_body_timeout: float
    """Seconds a metered request body may take to arrive (408 ``request_timeout`` after)."""
    max_input_tokens: int | None
    """The longest prompt one request may send, in tokens (413 ``prompt_too_large``)."""
    max_buffered_bodies: int
    """Bytes of request bodies all requests may hold at once while they are being read
    (503 ``server_busy`` above): unpaid requests cannot pin more memory than this."""
    recheck_every: float
    """Seconds between re-verifications of a streaming answer's authorization (0: never)."""
    expiry_margin: float
    """Seconds before an authorization's deadline at which its answer ends and is settled."""
    voided_payer_seconds: float
    """How long a payer that voided an authorization is refused (0: not refused)."""

    @classmethod
    def create(
        cls,
        *,
        pay_to: str,
        price_per_token: PriceModel | PriceInput,
        network: str = "eip155:8453",
        facilitator_url: str = DEFAULT_FACILITATOR_URL,
        asset: Asset | None = None,
        max_tokens: int = 4096,
        schemes: Sequence[Scheme] = ("upto",),
        max_timeout_seconds: int = 300,
        store: PaymentStore | str | None = None,
        meter: MeterFactory = auto_meter,
        receipts_path: str = "/x402/receipts/",
        settle_before_response: bool | None = None,
        facilitator_headers: FacilitatorHeaders | None = None,
        facilitator_api_key: str | None = None,
        facilitator_timeout: float = 30.0,
        max_payment_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        retry_after_seconds: int = 5,
        description: str | None = None,
        facilitator: FacilitatorClient | None = None,
        routes: Sequence[str] | None = None,
        on_settled: SettlementHook | None = None,
        on_settlement_failed: SettlementHook | None = None,
        settlement_retry: RetryPolicy | None = None,
        metrics: MeterMetrics | None = None,
        checkpoint_every: float = 2.0,
        shape_requests: bool = False,
        on_cap: CapPolicy = "end",
        max_request_body: int = 1024 * 1024,
        request_body_timeout: float = 30.0,
        max_input_tokens: int | None = None,
        max_buffered_bodies: int = 64 * 1024 * 1024,
        recheck_every: float = 5.0,
        expiry_margin: float = 20.0,
        voided_payer_seconds: float = 3600.0,
    ) -> MeterConfig:
        """Check every option once and compile it; a bad one raises ``ConfigurationError``.

        ``pay_to`` receives the payments; ``price_per_token`` is a price in asset units per
        token (str/Decimal), a ``TokenPrice``, a ``PriceTable`` or a function of the request;
        ``max_tokens`` is the output one authorization covers (it covers the request's
        prompt on top, as the meter estimates it); ``routes`` lists metered routes
        (``None``: only ``@metered`` endpoints). docs/middleware.md describes every option.
        """
        if not isinstance(pay_to, str) or not _ADDRESS.fullmatch(pay_to):
            raise ConfigurationError(
                "pay_to must be the EVM address that receives the payments (0x + 40 hex"
                f" digits), got {pay_to!r}"
            )
        if not isinstance(network, str) or not _CAIP2_EVM.fullmatch(network):
            chain_id = V1_NETWORK_CHAIN_IDS.get(network) if isinstance(network, str) else None
            hint = f": for {network!r} that is 'eip155:{chain_id}'" if chain_id else ""
            raise ConfigurationError(
                f"network must be a CAIP-2 EVM id like 'eip155:8453', got {network!r}{hint}"
            )
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
            raise ConfigurationError(f"max_tokens must be a positive int, got {max_tokens!r}")
        scheme_tuple = tuple(schemes)
        if not scheme_tuple or not set(scheme_tuple) <= SCHEMES:
            raise ConfigurationError(
                f"schemes must be a non-empty subset of {sorted(SCHEMES)}, got {schemes!r}"
            )
        if max_timeout_seconds < 30:
            raise ConfigurationError(
                "max_timeout_seconds must be at least 30: answers take time to stream"
            )
        if not (receipts_path.startswith("/") and receipts_path.endswith("/")):
            raise ConfigurationError(
                f"receipts_path must start and end with '/', got {receipts_path!r}"
            )
        if settle_before_response is not None and not isinstance(settle_before_response, bool):
            raise ConfigurationError(
                "settle_before_response must be True, False or None (by scheme),"
                f" got {settle_before_response!r}"
            )
        if on_cap not in ("end", "finish"):
            raise ConfigurationError(f"on_cap must be 'end' or 'finish', got {on_cap!r}")
        if checkpoint_every < 0:
            raise ConfigurationError(
                f"checkpoint_every must be >= 0 seconds, got {checkpoint_every!r}"
            )
        if recheck_every < 0:
            raise ConfigurationError(f"recheck_every must be >= 0 seconds, got {recheck_every!r}")
        if not PERMIT2_DEADLINE_BUFFER < expiry_margin < max_timeout_seconds:
            raise ConfigurationError(
                f"expiry_margin must be more than {PERMIT2_DEADLINE_BUFFER} seconds (facilitators"
                " refuse to settle closer to the deadline) and less than max_timeout_seconds"
                f" ({max_timeout_seconds}), got {expiry_margin!r}"
            )
        if voided_payer_seconds < 0:
            raise ConfigurationError(
                f"voided_payer_seconds must be >= 0 seconds, got {voided_payer_seconds!r}"
            )
        if isinstance(routes, str):
            raise ConfigurationError("routes must be a list of patterns, not a single string")
        for name, value in (
            ("max_request_body", max_request_body),
            ("max_buffered_bodies", max_buffered_bodies),
            ("max_input_tokens", 1 if max_input_tokens is None else max_input_tokens),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
        if max_buffered_bodies < max_request_body:
            raise ConfigurationError(
                "max_buffered_bodies must be at least max_request_body "
                f"({max_buffered_bodies} < {max_request_body})"
            )
        if isinstance(request_body_timeout, bool) or not request_body_timeout > 0:
            raise ConfigurationError(
                f"request_body_timeout must be > 0 seconds, got {request_body_timeout!r}"
            )
        if not facilitator_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"facilitator_url must be an http(s) URL, got {facilitator_url!r}"
            )
        if facilitator_api_key is not None and not (
            isinstance(facilitator_api_key, str) and _API_KEY.fullmatch(facilitator_api_key)
        ):
            raise ConfigurationError(
                "facilitator_api_key must be a non-empty string of printable ASCII without spaces"
            )
        if (
            facilitator_api_key is not None
            and isinstance(facilitator_headers, Mapping)
            and any(name.lower() == "authorization" for name in facilitator_headers)
        ):
            raise ConfigurationError(
                "facilitator_api_key and an Authorization facilitator header: give one"
            )
        headers = (
            tuple(sorted(facilitator_headers.items()))
            if isinstance(facilitator_headers, Mapping)
            else facilitator_headers
        )
        return cls(
            pay_to=pay_to,
            network=network,
            asset=asset if asset is not None else default_asset(network),
            price=as_price_model(price_per_token),
            max_tokens=max_tokens,
            facilitator_url=facilitator_url.rstrip("/"),
            schemes=scheme_tuple,
            max_timeout_seconds=max_timeout_seconds,
            store=store,
            meter=meter,
            receipts_path=receipts_path,
            settle_before_response=settle_before_response,
            facilitator_headers=headers,
            facilitator_api_key=facilitator_api_key,
            facilitator_timeout=facilitator_timeout,
            max_payment_header_bytes=max_payment_header_bytes,
            retry_after_seconds=retry_after_seconds,
            description=description,
            facilitator=facilitator,
            routes=None if routes is None else tuple(routes),
            on_settled=on_settled,
            on_settlement_failed=on_settlement_failed,
            settlement_retry=settlement_retry or RetryPolicy(),
            metrics=metrics,
            checkpoint_every=checkpoint_every,
            shape_requests=shape_requests,
            on_cap=on_cap,
            max_request_body=max_request_body,
            request_body_timeout=request_body_timeout,
            max_input_tokens=max_input_tokens,
            max_buffered_bodies=max_buffered_bodies,
            recheck_every=recheck_every,
            expiry_margin=expiry_margin,
            voided_payer_seconds=voided_payer_seconds,
        )

    def price_model_for(self, spec: RouteSpec) -> PriceModel:
        return spec.price if spec.price is not None else self.price

    def terms_for(self, spec: RouteSpec, price: TokenPrice, input_tokens: int = 0) -> PaymentTerms:
        """The payment terms of a route at ``price`` for a prompt of ``input_tokens``, with
        the route's overrides."""
        tariff = Tariff(
            price, self.asset.decimals, spec.max_tokens or self.max_tokens, input_tokens
        )
        return PaymentTerms(
            network=self.network,
            asset=self.asset,
            pay_to=self.pay_to,
            tariff=tariff,
            schemes=self.schemes,
            max_timeout_seconds=self.max_timeout_seconds,
            description=spec.description or self.description,
        )
