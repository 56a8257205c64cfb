"""The gateway's configuration: checked once at startup, each mistake named, secrets kept out."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import pytest
from eth_account import Account
from hypothesis import given
from hypothesis import strategies as st

from x402_meter.errors import RequestRefusedError
from x402_meter.gateway import GatewayConfig, GatewayConfigError, parse_config
from x402_meter.gateway.config import load_config
from x402_meter.gateway.plans import apply_plan
from x402_meter.gateway.policy import RequestPolicy
from x402_meter.gateway.serve import check_runnable

SELLER: Final = "0x" + "12" * 20
KEY: Final = "sk-unit-test-key-0123456789"
BASE: Final[dict[str, Any]] = {
    "gateway": {"pay_to": SELLER, "network": "eip155:84532", "store": "memory://"},
    "upstreams": {
        "openai": {
            "kind": "openai",
            "base_url": "https://api.openai.example",
            "api_key_env": "OPENAI_KEY",
            "plans": [
                {
                    "models": ["gpt-small", "gpt-small-*"],
                    "price_per_million": {"input": "0.15", "output": "0.60"},
                    "max_tokens": 2048,
                    "pinned": {"n": 1},
                }
            ],
        }
    },
}
ENV: Final = {"OPENAI_KEY": KEY}


def parse(
    changes: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> GatewayConfig:
    data = copy.deepcopy(BASE)
    for dotted, value in (changes or {}).items():
        *parents, name = dotted.split("/")
        holder: Any = data
        for key in parents:
            holder = holder[int(key)] if isinstance(holder, list) else holder[key]
        if value is DELETE:
            del holder[name]
        else:
            holder[name] = value
    return parse_config(data, ENV if env is None else env, base_dir=Path())


DELETE: Final = object()
OPENAI: Final = "upstreams/openai"
PLAN: Final = "upstreams/openai/plans/0"


def test_a_good_config_compiles_routes_to_fixed_upstream_urls() -> None:
    config = parse()
    assert sorted(config.routes) == ["/v1/chat/completions", "/v1/embeddings", "/v1/responses"]
    route = config.routes["/v1/chat/completions"]
    assert route.upstream_url == "https://api.openai.example/v1/chat/completions"
    assert route.plans.match("gpt-small-2025").label == "gpt-small-*"  # type: ignore[union-attr]
    assert route.plans.match("gpt-smal") is None
    price = route.plans.match("gpt-small").plan.price  # type: ignore[union-attr]
    assert (price.input, price.max_tokens) == (Decimal("0.00000015"), 2048)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"gateway/pay_to": DELETE}, "gateway.pay_to"),
        ({"gateway/pay_to": "0x12"}, "pay_to"),
        ({"gateway/network": "base"}, "network"),
        ({"gateway/schemes": ["free"]}, "gateway.schemes"),
        ({"gateway/max_request_body": 0}, "gateway.max_request_body"),
        ({"gateway/cors_origins": ["https://x.example/"]}, "gateway.cors_origins"),
        ({"gateway/colour": "red"}, "gateway.colour"),
        ({"upstreams": {}}, "upstreams"),
        ({f"{OPENAI}/kind": "gopher"}, "upstreams.openai.kind"),
        ({f"{OPENAI}/base_url": "ftp://x"}, "upstreams.openai.base_url"),
        ({f"{OPENAI}/base_url": "https://u:p@x.example"}, "upstreams.openai.base_url"),
        ({f"{OPENAI}/base_url": "https://x.example/?key=1"}, "upstreams.openai.base_url"),
        ({f"{OPENAI}/paths": ["/v1/../admin"]}, "upstreams.openai.paths"),
        ({f"{OPENAI}/paths": ["/v1/chat%2Fx"]}, "upstreams.openai.paths"),
        ({f"{OPENAI}/paths": ["/v1/models"]}, "gateway's own path"),
        ({f"{OPENAI}/prefix": "openai"}, "upstreams.openai.prefix"),
        ({f"{OPENAI}/api_key": KEY}, "secrets are never read from the config"),
        ({f"{OPENAI}/headers": {"Authorization": "Bearer x"}}, "upstreams.openai.headers"),
        ({f"{OPENAI}/forward_headers": ["x-api-key"]}, "upstreams.openai.forward_headers"),
        ({f"{OPENAI}/read_timeout": -1}, "upstreams.openai.read_timeout"),
        ({f"{OPENAI}/plans": []}, "upstreams.openai.plans"),
        ({f"{OPENAI}/default_model": "other"}, "upstreams.openai.default_model"),
        ({f"{PLAN}/models": []}, "plans[0].models"),
        ({f"{PLAN}/models": ["gpt-*-mini"]}, "plans[0].models"),
        ({f"{PLAN}/price_per_million": DELETE}, "plans[0]: price it"),
        ({f"{PLAN}/price_per_million": {"input": 0.15, "output": "1"}}, "float"),
        ({f"{PLAN}/price_per_million": {"input": "1"}}, "price_per_million"),
        ({f"{PLAN}/price_per_million": {"input": "1", "output": "1", "x": "1"}}, ".x"),
        ({f"{PLAN}/price_per_token": "0.1"}, "not both"),
        ({f"{PLAN}/max_tokens": 0}, "max_tokens"),
        ({f"{PLAN}/on_override": "ignore"}, "plans[0].on_override"),
        ({f"{PLAN}/paths": ["/v1/other"]}, "plans[0].paths"),
        ({f"{PLAN}/pinned": {"model": "gpt-large"}}, "pins model 'gpt-large'"),
    ],
)
def test_each_mistake_stops_the_start_naming_what_is_wrong(
    changes: dict[str, Any], named: str
) -> None:
    with pytest.raises(GatewayConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse(changes)


def test_a_missing_key_variable_stops_the_start_naming_it() -> None:
    with pytest.raises(GatewayConfigError, match="OPENAI_KEY is not set"):
        parse(env={})


def test_a_key_from_a_file_is_read_and_never_shown(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(KEY + "\n")
    data = copy.deepcopy(BASE)
    del data["upstreams"]["openai"]["api_key_env"]
    data["upstreams"]["openai"]["api_key_file"] = "key"
    config = parse_config(data, {}, base_dir=tmp_path)
    (upstream,) = config.upstreams
    assert upstream.auth_headers() == [(b"authorization", f"Bearer {KEY}".encode())]
    assert KEY not in repr(config)
    assert KEY not in repr(upstream)


def test_the_environment_overrides_the_file_settings() -> None:
    env = {
        **ENV,
        "X402_PAY_TO": "0x" + "34" * 20,
        "X402_NETWORK": "eip155:31337",
        "X402_FACILITATOR_API_KEY": "facilitator-key-1234567890",
        "X402_ASSET": "0x" + "56" * 20,
        "X402_ASSET_NAME": "USDC",
        "X402_ASSET_DECIMALS": "6",
    }
    config = parse(env=env)
    assert (config.pay_to, config.network) == ("0x" + "34" * 20, "eip155:31337")
    assert config.asset is not None
    assert (config.asset.address, config.asset.name) == ("0x" + "56" * 20, "USDC")
    assert config.meter_options()["facilitator_api_key"] == "facilitator-key-1234567890"


def test_two_upstreams_on_one_path_need_a_prefix() -> None:
    data = copy.deepcopy(BASE)
    data["upstreams"]["vllm"] = {**data["upstreams"]["openai"], "base_url": "http://gpu:8000"}
    with pytest.raises(GatewayConfigError, match="also openai's"):
        parse_config(data, ENV, base_dir=Path())
    data["upstreams"]["vllm"]["prefix"] = "/vllm"
    assert "/vllm/v1/chat/completions" in parse_config(data, ENV, base_dir=Path()).routes


def test_several_workers_need_a_shared_store() -> None:
    with pytest.raises(GatewayConfigError, match="shared store"):
        check_runnable(parse(), 2)
    check_runnable(parse({"gateway/store": "sqlite:///ledger.sqlite3"}), 2)


def test_pinned_fields_are_refused_or_overridden_and_defaults_fill_gaps() -> None:
    upstream = parse({f"{PLAN}/defaults": {"temperature": 0.5, "options.seed": 7}}).upstreams[0]
    plan = upstream.plans[0]
    body: dict[str, Any] = {"model": "gpt-small", "n": 1}
    assert apply_plan(body, plan)
    assert body == {"model": "gpt-small", "n": 1, "temperature": 0.5, "options": {"seed": 7}}
    with pytest.raises(RequestRefusedError, match="n is set by this service"):
        apply_plan({"n": True}, plan)  # true is not 1
    override = parse({f"{PLAN}/on_override": "override"}).upstreams[0].plans[0]
    body = {"n": 5}
    apply_plan(body, override)
    assert body["n"] == 1


def route_scope(path: str, raw: bytes, method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "raw_path": raw, "headers": []}


@given(path=st.text(max_size=60), raw=st.binary(max_size=60))
def test_only_an_allowlisted_path_sent_as_itself_is_a_route(path: str, raw: bytes) -> None:
    policy = RequestPolicy(lambda *_: None, parse())  # type: ignore[arg-type]
    route = policy.route(route_scope(path, raw))
    if route is not None:
        assert path in policy.routes
        assert raw == path.encode()


def test_the_check_flag_says_ok_or_names_the_mistake(tmp_path: Path) -> None:
    good = tmp_path / "gateway.toml"
    good.write_text(
        f'[gateway]\npay_to = "{SELLER}"\n[upstreams.local]\nkind = "ollama"\n'
        'base_url = "http://127.0.0.1:11434"\n[[upstreams.local.plans]]\n'
        'models = ["llama3*"]\nprice_per_token = "0.000001"\n'
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('"0.000001"', "0.000001"))
    command = [sys.executable, "-m", "x402_meter", "gateway", "--check", "--config"]
    ok = subprocess.run([*command, str(good)], capture_output=True, text=True, check=False)
    refused = subprocess.run([*command, str(bad)], capture_output=True, text=True, check=False)
    assert (ok.returncode, refused.returncode) == (0, 2), (ok.stderr, refused.stderr)
    assert "OK" in ok.stdout
    assert "upstreams.local.plans[0]" in refused.stderr
    assert "float" in refused.stderr
    assert load_config(good, {}).routes["/api/chat"].upstream_url.endswith("/api/chat")


# -- sessions (batch-settlement) -------------------------------------------------------------

SESSIONS: Final = "gateway/sessions"
AUTHORIZER_KEY: Final = "0x" + "4f" * 32


def sessions(settings: dict[str, Any], env: dict[str, str] | None = None) -> GatewayConfig:
    """The base config offering sessions, with ``[gateway.sessions]`` = ``settings``."""
    return parse(
        {"gateway/schemes": ["upto", "batch-settlement"], SESSIONS: settings},
        env={**ENV, **(env or {})},
    )


def test_sessions_are_offered_with_the_middlewares_defaults_without_a_sessions_table() -> None:
    config = parse({"gateway/schemes": ["upto", "batch-settlement"]})
    options = config.meter_options()
    assert options["schemes"] == ("upto", "batch-settlement")
    assert not {key for key in options if key.startswith("session_") or key == "channel_store"}


def test_the_sessions_table_becomes_the_middlewares_session_options() -> None:
    config = sessions(
        {
            "channel_store": "redis://127.0.0.1:6379/2",
            "deposit_multiple": 20,
            "withdraw_delay": 86_400,
            "state_ttl": 120,
            "claim_interval": 600,
            "claims_per_batch": 50,
            "receiver_authorizer_key_env": "SELLER_AUTHORIZER_KEY",
        },
        env={"SELLER_AUTHORIZER_KEY": AUTHORIZER_KEY},
    )
    options: dict[str, Any] = dict(config.meter_options())
    signer = options.pop("session_receiver_authorizer")
    assert signer.address == Account.from_key(AUTHORIZER_KEY).address
    assert {k: v for k, v in options.items() if "session" in k or "channel" in k} == {
        "channel_store": "redis://127.0.0.1:6379/2",
        "session_deposit_multiple": 20,
        "session_withdraw_delay": 86_400,
        "session_state_ttl": 120,
        "session_claim_interval": 600,
        "session_claims_per_batch": 50,
    }
    assert AUTHORIZER_KEY not in repr(config)
    assert AUTHORIZER_KEY[2:] not in repr(config)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"channel_store": "postgres://db"}, "gateway.sessions.channel_store"),
        ({"deposit_multiple": 0}, "gateway.sessions.deposit_multiple"),
        ({"withdraw_delay": 60}, "gateway.sessions.withdraw_delay must be 900"),
        ({"withdraw_delay": 900.5}, "gateway.sessions.withdraw_delay"),
        ({"state_ttl": 1000}, "gateway.sessions.state_ttl"),
        ({"claim_interval": 3600}, "gateway.sessions.claim_interval must be > 0 and at most"),
        ({"claims_per_batch": 129}, "gateway.sessions.claims_per_batch"),
        ({"claim_every": 60}, "gateway.sessions.claim_every"),
        ({"receiver_authorizer_key": AUTHORIZER_KEY}, "secrets are never read"),
        ({"receiver_authorizer_key_env": "NOT_SET"}, "NOT_SET is not set"),
    ],
)
def test_each_session_mistake_stops_the_start_naming_the_setting(
    settings: dict[str, Any], named: str
) -> None:
    with pytest.raises(GatewayConfigError, match=re.escape(named)):
        sessions(settings)


def test_a_malformed_authorizer_key_is_refused_without_showing_it() -> None:
    with pytest.raises(GatewayConfigError, match="secp256k1 private key") as refused:
        sessions(
            {"receiver_authorizer_key_env": "SELLER_AUTHORIZER_KEY"},
            env={"SELLER_AUTHORIZER_KEY": "0xnot-a-key-but-a-secret"},
        )
    assert "not-a-key" not in str(refused.value)


def test_a_sessions_table_without_batch_settlement_is_a_mistake() -> None:
    named = re.escape('"batch-settlement" in gateway.schemes')
    with pytest.raises(GatewayConfigError, match=named):
        parse({SESSIONS: {"deposit_multiple": 5}})


def test_several_workers_need_shared_channels() -> None:
    shared = {"gateway/store": "sqlite:///ledger.sqlite3", "gateway/schemes": ["batch-settlement"]}
    with pytest.raises(GatewayConfigError, match=re.escape("gateway.sessions.channel_store")):
        check_runnable(parse({**shared, SESSIONS: {"channel_store": "memory://"}}), 2)
    check_runnable(parse({**shared, SESSIONS: {"channel_store": "sqlite:///channels.db"}}), 2)
