"""The middleware's configuration, validated and compiled once."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Required, TypedDict, Unpack

from x402.http.constants import DEFAULT_FACILITATOR_URL
from x402.mechanisms.evm.batch_settlement.constants import MAX_WITHDRAW_DELAY, MIN_WITHDRAW_DELAY
from x402.mechanisms.evm.batch_settlement.types import AuthorizerSigner
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
from x402_meter.schemes.batch_settlement import default_state_ttl
from x402_meter.settlement import RetryPolicy, SettlementHook
from x402_meter.store import ChannelStore, PaymentStore

_ADDRESS: Final = re.compile(r"0x[0-9a-fA-F]{40}")
_CAIP2_EVM: Final = re.compile(r"eip155:[1-9][0-9]*")
_API_KEY: Final = re.compile(r"[\x21-\x7e]+")

FacilitatorHeaders = Mapping[str, str] | Callable[[], Mapping[str, str]]
CapPolicy = Literal["end", "finish"]
"""When a stream's count reaches the authorized maximum: end it there, or let it finish
(the charge stays capped at the maximum either way)."""


class MeterOptions(TypedDict, total=False):
    """``X402Meter``'s keyword arguments, typed; ``MeterConfig`` declares their defaults and
    checks them (``tests/unit/test_config_options.py`` keeps the two lists the same)."""

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
    recheck_timeout: float
    expiry_margin: float
    voided_payer_seconds: float
    channel_store: ChannelStore | str | None
    session_deposit_multiple: int
    session_withdraw_delay: int
    session_state_ttl: float | None
    session_receiver_authorizer: AuthorizerSigner | None
    session_claim_interval: float
    session_claims_per_batch: int


@dataclass(frozen=True, kw_only=True, eq=False)
class MeterConfig:
    """Everything ``X402Meter`` was configured with, checked once (``__post_init__``).

    Each option is declared here once, with its default; ``MeterOptions`` types the same
    keywords for ``X402Meter(**options)`` (a test keeps the two the same). What the request
    path needs compiled (the price model, the asset, the retry policy) is derived here too.
    """

    pay_to: str
    """The EVM address that receives the payments."""
    price_per_token: PriceModel | PriceInput
    """A price in asset units per token (str/Decimal), a ``TokenPrice``, a ``PriceTable`` or
    a function of the request."""
    network: str = "eip155:8453"
    facilitator_url: str = DEFAULT_FACILITATOR_URL
    asset: Asset | None = None
    """The token paid in (``None``: the network's USDC)."""
    max_tokens: int = 4096
    """The output one authorization covers (it covers the prompt on top, as estimated)."""
    routes: Sequence[str] | None = None
    """Metered routes (``None``: only ``@metered`` endpoints)."""
    schemes: Sequence[Scheme] = ("upto",)
    max_timeout_seconds: int = 300
    store: PaymentStore | str | None = None
    """A store, a store URL, or None: ``$X402_METER_STORE``, else ``sqlite:///x402-meter.sqlite3``."""
    meter: MeterFactory = auto_meter
    receipts_path: str = "/x402/receipts/"
    settle_before_response: bool | None = None
    """Hold non-streamed answers until settled (``None``: as the scheme prefers)."""
    facilitator_headers: FacilitatorHeaders | None = None
    facilitator_api_key: str | None = field(default=None, repr=False)
    """Sent as ``Authorization: Bearer``; kept out of ``repr`` so that it is never logged."""
    facilitator_timeout: float = 30.0
    max_payment_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    retry_after_seconds: int = 5
    description: str | None = None
    facilitator: FacilitatorClient | None = None
    on_settled: SettlementHook | None = None
    on_settlement_failed: SettlementHook | None = None
    settlement_retry: RetryPolicy | None = None
    metrics: MeterMetrics | None = None
    checkpoint_every: float = 2.0
    """Seconds between checkpoints of a stream's running count (0: before every chunk)."""
    shape_requests: bool = False
    on_cap: CapPolicy = "end"
    max_request_body: int = 1024 * 1024
    """Bytes a metered request body may have (413 ``request_too_large`` above)."""
    request_body_timeout: float = 30.0
    """Seconds a metered request body may take to arrive (408 ``request_timeout`` after)."""
    max_input_tokens: int | None = None
    """The longest prompt one request may send, in tokens (413 ``prompt_too_large``)."""
    max_buffered_bodies: int = 64 * 1024 * 1024
    """Bytes of request bodies all requests may hold at once while they are being read
    (503 ``server_busy`` above): unpaid requests cannot pin more memory than this."""
    recheck_every: float = 5.0
    """Seconds between re-verifications of a streaming answer's authorization (0: never):
    from one re-check's answer to the next re-check, less a random part of up to a quarter."""
    recheck_timeout: float = 10.0
    """Seconds a re-verification may take to answer; later, it is a miss (as when the
    facilitator cannot be reached), and the second miss in a row ends the answer."""
    expiry_margin: float = 20.0
    """Seconds before an authorization's deadline at which its answer ends and is settled."""
    voided_payer_seconds: float = 3600.0
    """How long a payer that voided an authorization is refused (0: not refused)."""
    channel_store: ChannelStore | str | None = None
    """Where sessions keep their channels: a channel store, a URL (``memory://``,
    ``sqlite:///path``), or None: beside the store (its SQLite file, or in memory)."""
    session_deposit_multiple: int = 10
    """A session's suggested first deposit (``minDeposit``): this many times the most one
    request can cost."""
    session_withdraw_delay: int = 900
    """Seconds a payer must wait to withdraw from a session's channel without the seller
    (900 s to 30 days): the window in which the seller's claims must land."""
    session_state_ttl: float | None = None
    """Seconds a channel's mirror of the chain is trusted for admitting vouchers with no
    facilitator call (None: a third of the withdraw delay, between 30 s and 5 min)."""
    session_receiver_authorizer: AuthorizerSigner | None = field(default=None, repr=False)
    """The seller's own receiver-authorizer key (e.g. the SDK's ``LocalAuthorizerSigner``),
    named in its channels (None: the facilitator's advertised ``receiverAuthorizer``)."""
    session_claim_interval: float = 60.0
    """Seconds between the claims worker's passes, each claiming every channel charged
    beyond its claims (at most half of what the withdraw delay leaves after
    ``session_state_ttl`` and ``max_timeout_seconds``: claims land before withdrawals)."""
    session_claims_per_batch: int = 100
    """Channels claimed per transaction (1..128; the SDK's channel manager sends 100)."""

    price: PriceModel = field(init=False, repr=False)
    """``price_per_token`` compiled."""
    payment_asset: Asset = field(init=False, repr=False)
    """``asset``, or the network's default."""
    retry: RetryPolicy = field(init=False, repr=False)
    """``settlement_retry``, or the default policy."""

    @classmethod
    def create(cls, **options: Unpack[MeterOptions]) -> MeterConfig:
        """``MeterConfig(**options)``: check every option once and compile it; a bad one
        raises ``ConfigurationError``. docs/middleware.md describes every option."""
        return cls(**options)

    def __post_init__(self) -> None:
        pay_to, network, max_tokens = self.pay_to, self.network, self.max_tokens
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
        schemes = self.schemes
        scheme_tuple = tuple(schemes)
        if not scheme_tuple or not set(scheme_tuple) <= SCHEMES:
            raise ConfigurationError(
                f"schemes must be a non-empty subset of {sorted(SCHEMES)}, got {schemes!r}"
            )
        max_timeout_seconds = self.max_timeout_seconds
        if max_timeout_seconds < 30:
            raise ConfigurationError(
                "max_timeout_seconds must be at least 30: answers take time to stream"
            )
        receipts_path = self.receipts_path
        if not (receipts_path.startswith("/") and receipts_path.endswith("/")):
            raise ConfigurationError(
                f"receipts_path must start and end with '/', got {receipts_path!r}"
            )
        settle_before_response = self.settle_before_response
        if settle_before_response is not None and not isinstance(settle_before_response, bool):
            raise ConfigurationError(
                "settle_before_response must be True, False or None (by scheme),"
                f" got {settle_before_response!r}"
            )
        if self.on_cap not in ("end", "finish"):
            raise ConfigurationError(f"on_cap must be 'end' or 'finish', got {self.on_cap!r}")
        if self.checkpoint_every < 0:
            raise ConfigurationError(
                f"checkpoint_every must be >= 0 seconds, got {self.checkpoint_every!r}"
            )
        if self.recheck_every < 0:
            raise ConfigurationError(
                f"recheck_every must be >= 0 seconds, got {self.recheck_every!r}"
            )
        if not self.recheck_timeout > 0:
            raise ConfigurationError(
                f"recheck_timeout must be > 0 seconds, got {self.recheck_timeout!r}"
            )
        expiry_margin = self.expiry_margin
        if not PERMIT2_DEADLINE_BUFFER < expiry_margin < max_timeout_seconds:
            raise ConfigurationError(
                f"expiry_margin must be more than {PERMIT2_DEADLINE_BUFFER} seconds (facilitators"
                " refuse to settle closer to the deadline) and less than max_timeout_seconds"
                f" ({max_timeout_seconds}), got {expiry_margin!r}"
            )
        if self.voided_payer_seconds < 0:
            raise ConfigurationError(
                f"voided_payer_seconds must be >= 0 seconds, got {self.voided_payer_seconds!r}"
            )
        self._check_sessions()
        if "batch-settlement" in scheme_tuple:
            self._check_claims()
        routes = self.routes
        if isinstance(routes, str):
            raise ConfigurationError("routes must be a list of patterns, not a single string")
        max_request_body, max_buffered_bodies = self.max_request_body, self.max_buffered_bodies
        max_input_tokens = self.max_input_tokens
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
        request_body_timeout = self.request_body_timeout
        if isinstance(request_body_timeout, bool) or not request_body_timeout > 0:
            raise ConfigurationError(
                f"request_body_timeout must be > 0 seconds, got {request_body_timeout!r}"
            )
        facilitator_url = self.facilitator_url
        if not facilitator_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"facilitator_url must be an http(s) URL, got {facilitator_url!r}"
            )
        api_key, headers = self.facilitator_api_key, self.facilitator_headers
        if api_key is not None and not (isinstance(api_key, str) and _API_KEY.fullmatch(api_key)):
            raise ConfigurationError(
                "facilitator_api_key must be a non-empty string of printable ASCII without spaces"
            )
        if (
            api_key is not None
            and isinstance(headers, Mapping)
            and any(name.lower() == "authorization" for name in headers)
        ):
            raise ConfigurationError(
                "facilitator_api_key and an Authorization facilitator header: give one"
            )
        # Frozen: the normalised values are set the one way a frozen dataclass allows.
        compiled: dict[str, object] = {
            "schemes": scheme_tuple,
            "routes": None if routes is None else tuple(routes),
            "facilitator_url": facilitator_url.rstrip("/"),
            # A copy: the caller's dict changing later does not change the headers sent.
            "facilitator_headers": dict(headers) if isinstance(headers, Mapping) else headers,
            "payment_asset": self.asset if self.asset is not None else default_asset(network),
            "price": as_price_model(self.price_per_token),
            "retry": self.settlement_retry or RetryPolicy(),
        }
        for name, compiled_value in compiled.items():
            object.__setattr__(self, name, compiled_value)

    def _check_sessions(self) -> None:
        multiple, delay, ttl = (
            self.session_deposit_multiple,
            self.session_withdraw_delay,
            self.session_state_ttl,
        )
        if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
            raise ConfigurationError(
                f"session_deposit_multiple must be an int >= 1, got {multiple!r}"
            )
        if isinstance(delay, bool) or not isinstance(delay, int):
            raise ConfigurationError(f"session_withdraw_delay must be an int, got {delay!r}")
        if not MIN_WITHDRAW_DELAY <= delay <= MAX_WITHDRAW_DELAY:
            raise ConfigurationError(
                f"session_withdraw_delay must be {MIN_WITHDRAW_DELAY}..{MAX_WITHDRAW_DELAY}"
                f" seconds (the contract's bounds), got {delay!r}"
            )
        if ttl is not None and not (isinstance(ttl, int | float) and 0 < ttl < delay):
            raise ConfigurationError(
                "session_state_ttl must be > 0 seconds and less than session_withdraw_delay,"
                f" got {ttl!r}"
            )
        authorizer = self.session_receiver_authorizer
        if authorizer is not None and not _ADDRESS.fullmatch(
            str(getattr(authorizer, "address", ""))
        ):
            raise ConfigurationError(
                "session_receiver_authorizer must be a signer with an address (e.g. the"
                " x402 SDK's LocalAuthorizerSigner)"
            )

    def _check_claims(self) -> None:
        """The claims worker must claim every charge before a withdrawal can take it (see
        ``x402_meter.channel_claims``)."""
        interval, per_batch = self.session_claim_interval, self.session_claims_per_batch
        if (
            isinstance(per_batch, bool)
            or not isinstance(per_batch, int)
            or not 1 <= per_batch <= 128
        ):
            raise ConfigurationError(
                f"session_claims_per_batch must be an int 1..128, got {per_batch!r}"
            )
        delay = self.session_withdraw_delay
        ttl = self.session_state_ttl
        if ttl is None:
            ttl = default_state_ttl(delay)
        longest = (delay - ttl - self.max_timeout_seconds) / 2
        if longest <= 0:
            raise ConfigurationError(
                f"session_withdraw_delay ({delay} s) leaves no time to claim a charge before a"
                f" withdrawal can take it: it must exceed session_state_ttl ({ttl:g} s) plus"
                f" max_timeout_seconds ({self.max_timeout_seconds} s)"
            )
        if (
            not isinstance(interval, int | float)
            or isinstance(interval, bool)
            or not 0 < interval <= longest
        ):
            raise ConfigurationError(
                f"session_claim_interval must be > 0 and at most {longest:g} seconds (half of"
                " session_withdraw_delay less session_state_ttl and max_timeout_seconds:"
                f" claims must land before a withdrawal), got {interval!r}"
            )

    def price_model_for(self, spec: RouteSpec) -> PriceModel:
        return spec.price if spec.price is not None else self.price

    def terms_for(self, spec: RouteSpec, price: TokenPrice, input_tokens: int = 0) -> PaymentTerms:
        """The payment terms of a route at ``price`` for a prompt of ``input_tokens``, with
        the route's overrides; the output covered is the price's own ``max_tokens``, else
        the route's, else the meter's."""
        max_tokens = price.max_tokens or spec.max_tokens or self.max_tokens
        tariff = Tariff(price, self.payment_asset.decimals, max_tokens, input_tokens)
        return PaymentTerms(
            network=self.network,
            asset=self.payment_asset,
            pay_to=self.pay_to,
            tariff=tariff,
            schemes=tuple(self.schemes),
            max_timeout_seconds=self.max_timeout_seconds,
            description=spec.description or self.description,
        )
