"""The examples' configuration, read from environment variables and checked once.

- ``X402_PAY_TO`` (required): the address that receives payments.
- ``X402_NETWORK``: the CAIP-2 network; default ``eip155:8453`` (Base).
- ``X402_FACILITATOR_URL``: the x402 facilitator; default ``https://x402.org/facilitator``.
- ``X402_FACILITATOR_API_KEY``: the key sent to it as ``Authorization: Bearer`` (what
  ``x402-meter facilitator`` and ``x402-meter dev`` require); unset, none is sent.
- ``X402_ASSET``: the token's address; default the network's USDC. With it:
  ``X402_ASSET_NAME`` (``USD Coin``), ``X402_ASSET_VERSION`` (``2``) and
  ``X402_ASSET_DECIMALS`` (``6``), the token's EIP-712 domain and decimals.
- ``X402_METER_STORE``: the payment ledger; default ``sqlite:///x402-meter.sqlite3``.
- ``X402_PRICES``: USD per token, per model, as ``model=price,...``; ``*=price`` prices
  any other model. Default ``local-stub=0.000002,local-stub-pro=0.000008``.
- ``X402_MAX_TOKENS``: the most one metered request may cost, in tokens; default 4096.
- ``X402_FLAT_PRICES``: USD per request on the flat-priced route, per model; default
  ``local-stub=0.001,local-stub-pro=0.004``.
- ``X402_PREMIUM_PRICE`` and ``X402_PREMIUM_MAX_TOKENS``: the ``@metered`` premium route's
  price per token and cap; default ``0.00001`` and 512.
- ``UPSTREAM_BASE_URL``: an OpenAI-compatible API, e.g. ``https://api.openai.com/v1``;
  unset, the answers come from the offline stub model.
- ``UPSTREAM_API_KEY``: its API key (sent upstream only, never to callers).
- ``X402_CORS_ORIGINS``: the browser origins (``https://chat.example.com,...``, or ``*``)
  whose pages may call the API and pay from the browser; unset, none but the API's own.
- ``X402_RPC_URL``: a JSON-RPC URL of the chain (the local stack's ``rpc_url``, as printed by
  ``x402-meter dev``), given to the chat page to read its wallet's balance; on the local
  chain (``eip155:31337``) the page then also offers anvil's public dev accounts.
- ``X402_SESSIONS``: ``1`` to offer sessions (x402 ``batch-settlement``: deposit once, pay
  each answer by voucher) beside ``upto`` on the per-token routes, ``0`` not to; unset, on
  on the local chain (``eip155:31337``, whose facilitator supports them) and off elsewhere
  (the facilitator must support ``batch-settlement`` and advertise a receiver authorizer).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from x402.http.constants import DEFAULT_FACILITATOR_URL

from x402_meter import Asset, ConfigurationError, PaymentStore, Scheme
from x402_meter.pricing import PriceTable, TokenPrice, parse_price

DEFAULT_PRICES: Final = "local-stub=0.000002,local-stub-pro=0.000008"
DEFAULT_FLAT_PRICES: Final = "local-stub=0.001,local-stub-pro=0.004"
DEFAULT_STORE: Final = "sqlite:///x402-meter.sqlite3"
LOCAL_NETWORK: Final = "eip155:31337"


def parse_prices(text: str, *, name: str) -> dict[str, str]:
    """``"model=0.000002,other=0.00001"`` -> ``{"model": "0.000002", ...}``, each checked."""
    prices: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        model, sep, price = entry.partition("=")
        if not sep or not model.strip():
            raise ConfigurationError(f"{name}: expected model=price entries, got {entry!r}")
        parse_price(price.strip(), name=f"{name}[{model.strip()}]")
        prices[model.strip()] = price.strip()
    if not prices:
        raise ConfigurationError(f"{name} names no model")
    return prices


def price_table(prices: Mapping[str, str], *, per_answer: bool = False) -> PriceTable:
    """A ``PriceTable`` from ``{"model": price}``; the model ``*`` prices every other one.

    ``per_answer``: each price is for a whole answer (with ``max_tokens=1``): the prompt is
    priced 0, so it adds nothing to the flat price.
    """

    def token_price(price: str) -> TokenPrice:
        return TokenPrice(input="0", output=price) if per_answer else TokenPrice.flat(price)

    named = {model: token_price(price) for model, price in prices.items() if model != "*"}
    default = prices.get("*")
    return PriceTable(named, default=None if default is None else token_price(default))


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {text!r}") from None
    if value <= 0:
        raise ConfigurationError(f"{name} must be positive, got {value}")
    return value


def _switch(environ: Mapping[str, str], name: str) -> bool | None:
    text = environ.get(name, "").strip().lower()
    if not text:
        return None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be 1 or 0, got {text!r}")


def _origins(environ: Mapping[str, str]) -> tuple[str, ...]:
    origins = tuple(
        filter(None, (o.strip() for o in environ.get("X402_CORS_ORIGINS", "").split(",")))
    )
    for origin in origins:
        if origin != "*" and (
            not origin.startswith(("http://", "https://")) or origin.endswith("/")
        ):
            raise ConfigurationError(
                f"X402_CORS_ORIGINS: each origin is scheme://host[:port] (or *), got {origin!r}"
            )
    return origins


@dataclass(frozen=True, slots=True)
class Settings:
    """How an example app is configured; ``Settings.from_env()`` reads the variables above."""

    pay_to: str
    network: str = "eip155:8453"
    facilitator_url: str = DEFAULT_FACILITATOR_URL
    facilitator_api_key: str | None = field(default=None, repr=False)
    asset: Asset | None = None
    store_url: str = DEFAULT_STORE
    prices: Mapping[str, str] = field(default_factory=lambda: parse_prices(DEFAULT_PRICES, name=""))
    max_tokens: int = 4096
    flat_prices: Mapping[str, str] = field(
        default_factory=lambda: parse_prices(DEFAULT_FLAT_PRICES, name="")
    )
    premium_price: str = "0.00001"
    premium_max_tokens: int = 512
    upstream_base_url: str | None = None
    upstream_api_key: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()
    """Origins whose pages may call the API from a browser (CORS); empty: none."""
    rpc_url: str | None = None
    """Given to the chat page, to read its wallet's balance; None: it asks the wallet."""
    sessions: bool | None = None
    """Offer sessions (``batch-settlement``) beside ``upto``; None: on the local chain only."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        pay_to = env.get("X402_PAY_TO")
        if not pay_to:
            raise ConfigurationError(
                "set X402_PAY_TO to the address that receives payments"
                " (see examples/fastapi_app/README.md)"
            )
        asset = None
        if env.get("X402_ASSET"):
            asset = Asset(
                env["X402_ASSET"],
                env.get("X402_ASSET_NAME", "USD Coin"),
                env.get("X402_ASSET_VERSION", "2"),
                _int(env, "X402_ASSET_DECIMALS", 6),
            )
        premium = env.get("X402_PREMIUM_PRICE", "0.00001")
        parse_price(premium, name="X402_PREMIUM_PRICE")
        return cls(
            pay_to=pay_to,
            network=env.get("X402_NETWORK", "eip155:8453"),
            facilitator_url=env.get("X402_FACILITATOR_URL", DEFAULT_FACILITATOR_URL),
            facilitator_api_key=env.get("X402_FACILITATOR_API_KEY") or None,
            asset=asset,
            store_url=env.get("X402_METER_STORE", DEFAULT_STORE),
            prices=parse_prices(env.get("X402_PRICES", DEFAULT_PRICES), name="X402_PRICES"),
            max_tokens=_int(env, "X402_MAX_TOKENS", 4096),
            flat_prices=parse_prices(
                env.get("X402_FLAT_PRICES", DEFAULT_FLAT_PRICES), name="X402_FLAT_PRICES"
            ),
            premium_price=premium,
            premium_max_tokens=_int(env, "X402_PREMIUM_MAX_TOKENS", 512),
            upstream_base_url=env.get("UPSTREAM_BASE_URL") or None,
            upstream_api_key=env.get("UPSTREAM_API_KEY") or None,
            cors_origins=_origins(env),
            rpc_url=env.get("X402_RPC_URL") or None,
            sessions=_switch(env, "X402_SESSIONS"),
        )

    @property
    def offers_sessions(self) -> bool:
        """Whether the per-token routes offer sessions beside ``upto``."""
        return self.network == LOCAL_NETWORK if self.sessions is None else self.sessions

    @property
    def per_token_schemes(self) -> tuple[Scheme, ...]:
        """The schemes the per-token routes offer, ``upto`` first."""
        return ("upto", "batch-settlement") if self.offers_sessions else ("upto",)

    def payment_options(self, store: PaymentStore) -> dict[str, Any]:
        """The ``X402Meter`` options every metered route of the example shares."""
        return {
            "pay_to": self.pay_to,
            "network": self.network,
            "facilitator_url": self.facilitator_url,
            "facilitator_api_key": self.facilitator_api_key,
            "asset": self.asset,
            "store": store,
        }

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the models on sale, OpenAI's list format plus their prices."""
        names = sorted((set(self.prices) | set(self.flat_prices)) - {"*"})
        return [
            {
                "id": name,
                "object": "model",
                "owned_by": "x402-meter-example",
                "x402": {
                    "price_per_token": self.prices.get(name, self.prices.get("*")),
                    "max_tokens": self.max_tokens,
                    "flat_price": self.flat_prices.get(name, self.flat_prices.get("*")),
                },
            }
            for name in names
        ]
