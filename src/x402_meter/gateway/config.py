"""The gateway's configuration: a TOML file, settings from the environment, checked once.

Every field is checked when the gateway starts, and the first bad one stops it with one
line that names it (``upstreams.openai.plans[0].price_per_million.input: ...``). Unknown
keys are errors too (a typo must not silently drop a limit). Secrets are never read from
the file: ``api_key_env``/``api_key_file`` name where they are
(``docs/design/gateway.md``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import httpx

from x402_meter.assets import Asset
from x402_meter.config import MeterConfig, MeterOptions
from x402_meter.errors import ConfigurationError, GatewayConfigError
from x402_meter.facilitator_authorizer import authorizer_signer
from x402_meter.gateway.plans import FieldPath, ModelPlans, OverridePolicy, Plan
from x402_meter.gateway.secrets import Secret, read_secret
from x402_meter.gateway.upstreams import KINDS, UpstreamKind
from x402_meter.pricing import PriceInput, TokenPrice
from x402_meter.protocol.offer import SCHEMES, Scheme

CONFIG_ENV: Final = "X402_GATEWAY_CONFIG"
"""The config file's path, for uvicorn's worker processes (``x402-meter gateway`` sets it)."""
MODELS_PATH: Final = "/v1/models"
HEALTH_PATH: Final = "/healthz"
LIVE_PATH: Final = "/livez"
METRICS_PATH: Final = "/metrics"
RECEIPTS_PATH: Final = "/x402/receipts/"
RESERVED_PATHS: Final = frozenset({MODELS_PATH, HEALTH_PATH, LIVE_PATH, METRICS_PATH})

_PATH: Final = re.compile(r"(/[A-Za-z0-9_.:-]+)+")
"""An allowlisted path: plain segments, nothing a decoder could turn into something else."""
_HEADER_NAME: Final = re.compile(r"[A-Za-z0-9-]+")
_SECRET_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"}
)

ENV_SETTINGS: Final = {
    "pay_to": "X402_PAY_TO",
    "network": "X402_NETWORK",
    "facilitator_url": "X402_FACILITATOR_URL",
    "store": "X402_METER_STORE",
}
"""Settings the environment overrides (``x402-meter dev`` prints these exports)."""
FACILITATOR_KEY_ENV: Final = "X402_FACILITATOR_API_KEY"
__all__ = [
    "GatewayConfig",
    "GatewayConfigError",
    "Route",
    "Upstream",
    "load_config",
    "parse_config",
]

ASSET_ENV: Final = ("X402_ASSET", "X402_ASSET_NAME", "X402_ASSET_VERSION", "X402_ASSET_DECIMALS")


@dataclass(frozen=True, slots=True, eq=False)
class Upstream:
    """One upstream API: where it is, how the gateway authenticates, what it exposes."""

    name: str
    kind: UpstreamKind
    base_url: str
    api_key: Secret | None
    paths: tuple[str, ...]
    prefix: str
    headers: tuple[tuple[bytes, bytes], ...]
    """Headers the gateway sets on every request (not secret: ``api_key_*`` is)."""
    forward_headers: frozenset[bytes]
    connect_timeout: float
    read_timeout: float
    default_model: str | None
    plans: tuple[Plan, ...]

    def auth_headers(self) -> list[tuple[bytes, bytes]]:
        """The header that carries the key, if there is a key."""
        if self.api_key is None:
            return []
        kind = KINDS[self.kind]
        value = kind.auth_prefix + self.api_key.reveal()
        return [(kind.auth_header, value.encode())]


@dataclass(frozen=True, slots=True, eq=False)
class SessionSettings:
    """``[gateway.sessions]``: how the gateway keeps and claims ``batch-settlement``
    channels; each setting is the middleware's ``session_*`` option (None: its default)."""

    channel_store: str | None
    """A URL (None: beside ``store``)."""
    deposit_multiple: int | None
    withdraw_delay: int | None
    state_ttl: float | None
    claim_interval: float | None
    claims_per_batch: int | None
    receiver_authorizer_key: Secret | None
    """The seller's own receiver-authorizer key (None: the facilitator's authorizer)."""

    def meter_options(self) -> dict[str, Any]:
        """The middleware's options for these settings (those given)."""
        options: dict[str, Any] = {
            option: value
            for option, value in (
                ("channel_store", self.channel_store),
                ("session_deposit_multiple", self.deposit_multiple),
                ("session_withdraw_delay", self.withdraw_delay),
                ("session_state_ttl", self.state_ttl),
                ("session_claim_interval", self.claim_interval),
                ("session_claims_per_batch", self.claims_per_batch),
            )
            if value is not None
        }
        if self.receiver_authorizer_key is not None:
            signer = authorizer_signer(self.receiver_authorizer_key.reveal())
            assert signer is not None  # checked when the config was read
            options["session_receiver_authorizer"] = signer
        return options


SESSION_SETTINGS: Final = {
    "channel_store": "channel_store",
    "deposit_multiple": "session_deposit_multiple",
    "withdraw_delay": "session_withdraw_delay",
    "state_ttl": "session_state_ttl",
    "claim_interval": "session_claim_interval",
    "claims_per_batch": "session_claims_per_batch",
    "receiver_authorizer_key": "session_receiver_authorizer",
}
"""``[gateway.sessions]`` settings -> the middleware's options (its errors name the latter)."""
_CHANNEL_STORE_URL: Final = re.compile(r"(memory://|sqlite:///.+|(redis|rediss|unix)://.+)")


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """One allowlisted ``POST`` path: the upstream URL it goes to, fixed here."""

    path: str
    """The gateway's path (``prefix`` + the upstream's path)."""
    upstream: Upstream
    upstream_url: str
    plans: ModelPlans


@dataclass(frozen=True, slots=True, eq=False)
class GatewayConfig:
    """The whole gateway, checked: what the meter is given, and the routes it forwards."""

    pay_to: str
    network: str
    facilitator_url: str
    facilitator_api_key: Secret | None
    asset: Asset | None
    store: str
    schemes: tuple[Scheme, ...]
    max_tokens: int
    max_request_body: int
    request_body_timeout: float
    max_timeout_seconds: int
    shape_requests: bool
    cors_origins: tuple[str, ...]
    metrics: bool
    description: str | None
    shutdown_timeout: float
    upstreams: tuple[Upstream, ...]
    routes: Mapping[str, Route] = field(repr=False)
    """By gateway path (every route is ``POST``)."""
    sessions: SessionSettings | None = None
    """``[gateway.sessions]`` (None: sessions are not offered, or with every default)."""

    def meter_options(self) -> MeterOptions:
        """``X402Meter``'s options (the price model and metrics are added by the app)."""
        options: dict[str, Any] = {
            "pay_to": self.pay_to,
            "price_per_token": TokenPrice.flat(0),  # replaced by the plans' price function
            "network": self.network,
            "facilitator_url": self.facilitator_url,
            "asset": self.asset,
            "store": self.store,
            "schemes": self.schemes,
            "max_tokens": self.max_tokens,
            "max_request_body": self.max_request_body,
            "request_body_timeout": self.request_body_timeout,
            "max_timeout_seconds": self.max_timeout_seconds,
            "shape_requests": self.shape_requests,
            "receipts_path": RECEIPTS_PATH,
            "routes": [f"POST {path}" for path in self.routes],
            "description": self.description,
        }
        if self.facilitator_api_key is not None:
            options["facilitator_api_key"] = self.facilitator_api_key.reveal()
        if self.sessions is not None:
            options.update(self.sessions.meter_options())
        return cast(MeterOptions, options)


def load_config(path: str | Path, environ: Mapping[str, str]) -> GatewayConfig:
    """Read and check ``path`` (TOML), with the environment's settings and secrets."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GatewayConfigError(f"cannot read {file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise GatewayConfigError(f"{file} is not valid TOML: {exc}") from None
    return parse_config(data, environ, base_dir=file.resolve().parent)


def parse_config(
    data: Mapping[str, Any], environ: Mapping[str, str], *, base_dir: Path
) -> GatewayConfig:
    """The checked configuration of ``data`` (a parsed TOML document)."""
    try:
        return _Parser(environ, base_dir).gateway(data)
    except GatewayConfigError:
        raise
    except ConfigurationError as exc:  # from a shared check (a price, an address)
        raise GatewayConfigError(str(exc)) from None


class _Table:
    """A TOML table being read: each key taken once; what is left over is an error."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise GatewayConfigError(f"{where or 'the config'} must be a table")
        self.data = dict(data)
        self.where = where

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def take(self, key: str, default: Any = None) -> Any:
        return self.data.pop(key, default)

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.take(key, default)
        if value is not None and (not isinstance(value, str) or not value):
            raise GatewayConfigError(f"{self.name(key)} must be a non-empty string")
        return value

    def number(self, key: str, default: float, *, integer: bool = False) -> Any:
        value = self.take(key, default)
        kinds: tuple[type[int] | type[float], ...] = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
            kind = "a positive whole number" if integer else "a positive number"
            raise GatewayConfigError(f"{self.name(key)} must be {kind}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.take(key, default)
        if not isinstance(value, bool):
            raise GatewayConfigError(f"{self.name(key)} must be true or false, got {value!r}")
        return value

    def strings(self, key: str, default: Sequence[str] = ()) -> tuple[str, ...]:
        value = self.take(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise GatewayConfigError(f"{self.name(key)} must be a list of non-empty strings")
        return tuple(value)

    def done(self) -> None:
        for key in self.data:
            if key.endswith(("_key", "secret", "password", "token")):
                raise GatewayConfigError(
                    f"{self.name(key)}: secrets are never read from the config file; name"
                    f" where it is with {key}_env (an environment variable) or {key}_file"
                )
        if self.data:
            unknown = ", ".join(sorted(self.name(key) for key in self.data))
            raise GatewayConfigError(f"unknown setting(s): {unknown}")


class _Parser:
    def __init__(self, environ: Mapping[str, str], base_dir: Path) -> None:
        self.environ = environ
        self.base_dir = base_dir

    def gateway(self, data: Mapping[str, Any]) -> GatewayConfig:
        top = _Table(data, "")
        settings = _Table(top.take("gateway", {}), "gateway")
        upstream_tables = _Table(top.take("upstreams", {}), "upstreams")
        top.done()
        for key, env in ENV_SETTINGS.items():  # the environment wins over the file
            if self.environ.get(env):
                settings.data[key] = self.environ[env]
        pay_to = settings.string("pay_to")
        if pay_to is None:
            raise GatewayConfigError(
                f"gateway.pay_to: the address that receives payments (or {ENV_SETTINGS['pay_to']})"
            )
        facilitator_key = read_secret(
            "gateway.facilitator_api_key",
            env_name=settings.take("facilitator_api_key_env")
            or (FACILITATOR_KEY_ENV if self.environ.get(FACILITATOR_KEY_ENV) else None),
            file_name=settings.take("facilitator_api_key_file"),
            environ=self.environ,
            base_dir=self.base_dir,
            required=False,
        )
        schemes = settings.strings("schemes", ("upto",))
        if not schemes or not set(schemes) <= SCHEMES:
            raise GatewayConfigError(
                f"gateway.schemes must be a non-empty subset of {sorted(SCHEMES)}, got {schemes}"
            )
        origins = settings.strings("cors_origins")
        for origin in origins:
            if origin != "*" and (
                not origin.startswith(("http://", "https://")) or origin.endswith("/")
            ):
                raise GatewayConfigError(
                    f"gateway.cors_origins: each is scheme://host[:port] (or *), got {origin!r}"
                )
        max_tokens = settings.number("max_tokens", 4096, integer=True)
        sessions = self.sessions(settings.take("sessions"), schemes)
        config_fields: dict[str, Any] = {
            "pay_to": pay_to,
            "network": settings.string("network", "eip155:8453"),
            "facilitator_url": settings.string("facilitator_url", MeterConfig.facilitator_url),
            "facilitator_api_key": facilitator_key,
            "asset": self.asset(settings),
            "store": settings.string("store", "sqlite:///x402-gateway.sqlite3"),
            "schemes": cast(tuple[Scheme, ...], schemes),
            "max_tokens": max_tokens,
            "max_request_body": settings.number("max_request_body", 1024 * 1024, integer=True),
            "request_body_timeout": settings.number("request_body_timeout", 30.0),
            "max_timeout_seconds": settings.number("max_timeout_seconds", 300, integer=True),
            "shape_requests": settings.boolean("shape_requests", True),
            "cors_origins": origins,
            "metrics": settings.boolean("metrics", True),
            "description": settings.string("description"),
            "shutdown_timeout": settings.number("shutdown_timeout", 30.0),
            "sessions": sessions,
        }
        settings.done()
        upstreams = tuple(
            self.upstream(name, _Table(table, f"upstreams.{name}"))
            for name, table in upstream_tables.data.items()
        )
        if not upstreams:
            raise GatewayConfigError("upstreams: configure at least one [upstreams.NAME]")
        routes = self.routes(upstreams)
        config = GatewayConfig(**config_fields, upstreams=upstreams, routes=routes)
        try:
            MeterConfig(**config.meter_options())  # the middleware's own checks, now
        except ConfigurationError as exc:
            raise GatewayConfigError(_gateway_names(str(exc))) from None
        return config

    def sessions(self, data: object, schemes: Sequence[str]) -> SessionSettings | None:
        """``[gateway.sessions]``, which only a gateway offering ``batch-settlement`` may
        have (a table that would change nothing is a mistake worth stopping for)."""
        if data is None:
            return None
        table = _Table(data, "gateway.sessions")
        if "batch-settlement" not in schemes:
            raise GatewayConfigError(
                'gateway.sessions: sessions are offered with "batch-settlement" in'
                f" gateway.schemes (it is {list(schemes)})"
            )
        channel_store = table.string("channel_store")
        if channel_store is not None and not _CHANNEL_STORE_URL.fullmatch(channel_store):
            raise GatewayConfigError(
                "gateway.sessions.channel_store must be memory://, sqlite:///path or"
                f" redis://host:port/db, got {channel_store!r}"
            )
        key = read_secret(
            "gateway.sessions.receiver_authorizer_key",
            env_name=table.take("receiver_authorizer_key_env"),
            file_name=table.take("receiver_authorizer_key_file"),
            environ=self.environ,
            base_dir=self.base_dir,
            required=False,
        )
        if key is not None and authorizer_signer(key.reveal()) is None:
            raise GatewayConfigError(
                f"gateway.sessions.receiver_authorizer_key ({key.source}) must be a secp256k1"
                " private key: 64 hex digits, optionally 0x-prefixed"
            )
        sessions = SessionSettings(
            channel_store=channel_store,
            deposit_multiple=_optional(table, "deposit_multiple", integer=True),
            withdraw_delay=_optional(table, "withdraw_delay", integer=True),
            state_ttl=_optional(table, "state_ttl"),
            claim_interval=_optional(table, "claim_interval"),
            claims_per_batch=_optional(table, "claims_per_batch", integer=True),
            receiver_authorizer_key=key,
        )
        table.done()
        return sessions

    def asset(self, settings: _Table) -> Asset | None:
        table = settings.take("asset")
        address = self.environ.get(ASSET_ENV[0])
        if address:
            env = self.environ
            decimals = env.get(ASSET_ENV[3], "6")
            if not decimals.isdigit():
                raise GatewayConfigError(f"{ASSET_ENV[3]} must be a whole number")
            return Asset(
                address,
                env.get(ASSET_ENV[1], "USD Coin"),
                env.get(ASSET_ENV[2], "2"),
                int(decimals),
            )
        if table is None:
            return None
        asset = _Table(table, "gateway.asset")
        address = asset.string("address")
        if address is None:
            raise GatewayConfigError("gateway.asset.address: the token's address")
        found = Asset(
            address,
            asset.string("name", "USD Coin") or "USD Coin",
            asset.string("version", "2") or "2",
            asset.number("decimals", 6, integer=True),
        )
        asset.done()
        return found

    def upstream(self, name: str, table: _Table) -> Upstream:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise GatewayConfigError(f"{table.where}: name upstreams with letters, digits, _ -")
        kind_name = table.string("kind")
        if kind_name not in KINDS:
            raise GatewayConfigError(f"{table.name('kind')} must be one of {sorted(KINDS)}")
        kind = KINDS[kind_name]
        base_url = self.base_url(table)
        api_key = read_secret(
            table.name("api_key"),
            env_name=table.take("api_key_env"),
            file_name=table.take("api_key_file"),
            environ=self.environ,
            base_dir=self.base_dir,
            required=False,
        )
        paths = table.strings("paths", kind.paths)
        for path in paths:
            if not _plain_path(path):
                raise GatewayConfigError(
                    f"{table.name('paths')}: {path!r} must be a plain path like"
                    " /v1/chat/completions (letters, digits, _ . : -)"
                )
        prefix = table.take("prefix", "")
        if not isinstance(prefix, str) or (prefix and not _plain_path(prefix)):
            raise GatewayConfigError(
                f"{table.name('prefix')} must be '' or a plain path like /openai"
            )
        headers = self.static_headers(table)
        extra_forward = table.strings("forward_headers")
        for header in extra_forward:
            if not _HEADER_NAME.fullmatch(header) or header.lower() in _SECRET_HEADERS:
                raise GatewayConfigError(
                    f"{table.name('forward_headers')}: {header!r} cannot be forwarded"
                )
        plan_tables = table.take("plans", [])
        if not isinstance(plan_tables, list) or not plan_tables:
            raise GatewayConfigError(
                f"{table.name('plans')}: at least one [[{table.where}.plans]] with models"
                " and prices"
            )
        plans = tuple(
            self.plan(_Table(plan, f"{table.where}.plans[{i}]"), paths)
            for i, plan in enumerate(plan_tables)
        )
        upstream = Upstream(
            name=name,
            kind=cast(UpstreamKind, kind_name),
            base_url=base_url,
            api_key=api_key,
            paths=paths,
            prefix=prefix,
            headers=headers,
            forward_headers=kind.forward_headers | {h.lower().encode() for h in extra_forward},
            connect_timeout=table.number("connect_timeout", 10.0),
            read_timeout=table.number("read_timeout", 120.0),
            default_model=table.string("default_model"),
            plans=plans,
        )
        table.done()
        return upstream

    def base_url(self, table: _Table) -> str:
        text = table.string("base_url")
        if text is None:
            raise GatewayConfigError(f"{table.name('base_url')}: the upstream's URL")
        try:
            url = httpx.URL(text)
        except httpx.InvalidURL as exc:
            raise GatewayConfigError(f"{table.name('base_url')}: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise GatewayConfigError(f"{table.name('base_url')} must be an http(s) URL")
        if url.userinfo or url.query or url.fragment:
            raise GatewayConfigError(
                f"{table.name('base_url')} may hold no user, password, query or fragment"
                " (keys go in api_key_env or api_key_file)"
            )
        return text.rstrip("/")

    def static_headers(self, table: _Table) -> tuple[tuple[bytes, bytes], ...]:
        headers = table.take("headers", {})
        if not isinstance(headers, dict):
            raise GatewayConfigError(f"{table.name('headers')} must be a table of strings")
        found = []
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name) or not isinstance(value, str):
                raise GatewayConfigError(f"{table.name('headers')}.{name} must be a string")
            if name.lower() in _SECRET_HEADERS:
                raise GatewayConfigError(
                    f"{table.name('headers')}.{name}: credentials go in api_key_env or"
                    " api_key_file, never in the config"
                )
            found.append((name.lower().encode(), value.encode()))
        return tuple(found)

    def plan(self, table: _Table, upstream_paths: Sequence[str]) -> Plan:
        models = table.strings("models")
        if not models:
            raise GatewayConfigError(f"{table.name('models')}: the model names it prices")
        for model in models:
            if "*" in model[:-1]:
                raise GatewayConfigError(
                    f"{table.name('models')}: {model!r}: '*' may only end a pattern"
                )
        paths = frozenset(table.strings("paths")) if "paths" in table.data else None
        if paths is not None:
            unknown = sorted(set(paths) - set(upstream_paths))
            if unknown:
                raise GatewayConfigError(
                    f"{table.name('paths')}: {unknown} are not among the upstream's paths"
                )
        price = self.price(table)
        on_override = table.string("on_override", "refuse")
        if on_override not in ("refuse", "override"):
            raise GatewayConfigError(f"{table.name('on_override')} must be 'refuse' or 'override'")
        plan = Plan(
            models=models,
            price=price,
            paths=paths,
            defaults=self.fields(table, "defaults"),
            pinned=self.fields(table, "pinned"),
            on_override=cast(OverridePolicy, on_override),
        )
        table.done()
        return plan

    def price(self, table: _Table) -> TokenPrice:
        per_token = table.take("price_per_token")
        per_million = table.take("price_per_million")
        per_request = table.take("per_request", "0")
        max_tokens = table.take("max_tokens")
        if per_token is not None and per_million is not None:
            raise GatewayConfigError(
                f"{table.where}: give price_per_token or price_per_million, not both"
            )
        if per_token is None and per_million is None and per_request == "0":
            raise GatewayConfigError(
                f"{table.where}: price it with price_per_token, price_per_million or per_request"
            )
        given = per_token if per_token is not None else per_million
        where = table.name("price_per_token" if per_token is not None else "price_per_million")
        maker = TokenPrice.per_million if per_million is not None else TokenPrice
        try:
            if given is None:
                return TokenPrice("0", "0", per_request=per_request, max_tokens=max_tokens)
            if isinstance(given, dict):
                prices = _Table(given, where)
                input_price = prices.take("input")
                output_price = prices.take("output")
                cached = prices.take("cached_input")
                prices.done()
                if input_price is None or output_price is None:
                    raise GatewayConfigError(f"{where}: give input and output (and cached_input)")
                return maker(
                    input_price,
                    output_price,
                    cached,
                    per_request=per_request,
                    max_tokens=max_tokens,
                )
            price = cast(PriceInput, given)
            return maker(price, price, price, per_request=per_request, max_tokens=max_tokens)
        except GatewayConfigError:
            raise
        except ConfigurationError as exc:
            raise GatewayConfigError(f"{table.where}: {exc}") from None

    def fields(self, table: _Table, key: str) -> tuple[tuple[FieldPath, Any], ...]:
        given = table.take(key, {})
        if not isinstance(given, dict):
            raise GatewayConfigError(f"{table.name(key)} must be a table of body fields")
        found = []
        for name, value in given.items():
            path = tuple(name.split("."))
            if not all(path):
                raise GatewayConfigError(f"{table.name(key)}: {name!r} is not a field path")
            found.append((path, value))
        return tuple(found)

    def routes(self, upstreams: Sequence[Upstream]) -> dict[str, Route]:
        routes: dict[str, Route] = {}
        for upstream in upstreams:
            for path in upstream.paths:
                gateway_path = upstream.prefix + path
                if gateway_path in RESERVED_PATHS or gateway_path.startswith(RECEIPTS_PATH):
                    raise GatewayConfigError(
                        f"upstreams.{upstream.name}: {gateway_path} is the gateway's own path"
                    )
                if gateway_path in routes:
                    other = routes[gateway_path].upstream.name
                    raise GatewayConfigError(
                        f"upstreams.{upstream.name}: {gateway_path} is also {other}'s; give one"
                        " of them a prefix"
                    )
                plans = ModelPlans(
                    [p for p in upstream.plans if p.paths is None or path in p.paths]
                )
                _check_pinned_models(upstream, path, plans)
                routes[gateway_path] = Route(
                    gateway_path, upstream, upstream.base_url + path, plans
                )
            if upstream.default_model is not None:
                for path in upstream.paths:
                    if routes[upstream.prefix + path].plans.match(upstream.default_model) is None:
                        raise GatewayConfigError(
                            f"upstreams.{upstream.name}.default_model: no plan of {path}"
                            f" prices {upstream.default_model!r}"
                        )
        return routes


def _optional(table: _Table, key: str, *, integer: bool = False) -> Any:
    """A positive number if the table has ``key``, else None (the middleware's default)."""
    return table.number(key, 0, integer=integer) if key in table.data else None


def _gateway_names(message: str) -> str:
    """The middleware's error, with its options named as the gateway's settings."""
    for setting, option in SESSION_SETTINGS.items():
        message = re.sub(rf"\b{option}\b", f"gateway.sessions.{setting}", message)
    return message


def _plain_path(path: str) -> bool:
    """Plain segments only: no ``.`` or ``..`` (which a client or proxy may collapse)."""
    return bool(_PATH.fullmatch(path)) and not {".", ".."} & set(path.split("/"))


def _check_pinned_models(upstream: Upstream, path: str, plans: ModelPlans) -> None:
    """A plan that pins the model must be the plan of that model: the meter prices the body
    it gets, whose model is the pinned one."""
    for plan in plans.plans:
        for field_path, value in plan.pinned:
            if field_path != ("model",):
                continue
            found = plans.match(value) if isinstance(value, str) else None
            if found is None or found.plan is not plan:
                raise GatewayConfigError(
                    f"upstreams.{upstream.name}: a plan of {path} pins model {value!r}, which"
                    " it does not price itself (name it in its models)"
                )
