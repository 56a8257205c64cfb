"""The options are declared once (``MeterConfig``), and a runtime is shared only by passing it."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from x402_meter import X402Meter
from x402_meter.config import MeterConfig, MeterOptions
from x402_meter.errors import ConfigurationError
from x402_meter.integrations.litestar import X402MeterPlugin
from x402_meter.store import MemoryStore

PAY_TO = "0x" + "33" * 20


async def nothing(scope: object, receive: object, send: object) -> None:
    """An app that is never called."""


def test_meter_options_types_exactly_the_config_keywords() -> None:
    keywords = {f.name for f in dataclasses.fields(MeterConfig) if f.init}
    assert set(typing.get_type_hints(MeterOptions)) == keywords


def test_create_is_the_constructor() -> None:
    created = MeterConfig.create(pay_to=PAY_TO, price_per_token="0.000002", max_tokens=7)
    assert created.max_tokens == 7
    assert created.retry == MeterConfig(pay_to=PAY_TO, price_per_token="1").retry


def test_facilitator_headers_are_copied_not_aliased() -> None:
    headers = {"X-Team": "a"}
    config = MeterConfig(pay_to=PAY_TO, price_per_token="1", facilitator_headers=headers)
    headers["X-Team"] = "b"
    assert config.facilitator_headers == {"X-Team": "a"}


def test_meters_with_equal_options_do_not_share_state_unless_given_the_runtime() -> None:
    options: MeterOptions = {"pay_to": PAY_TO, "price_per_token": "1", "store": "memory://"}
    first, second = X402Meter(nothing, **options), X402Meter(nothing, **options)
    assert first.runtime is not second.runtime
    shared = X402Meter.sharing(nothing, first.runtime)
    assert shared.runtime is first.runtime
    assert shared.config is first.config


def test_a_runtime_and_options_together_are_refused() -> None:
    first = X402Meter(nothing, pay_to=PAY_TO, price_per_token="1", store=MemoryStore())
    with pytest.raises(ConfigurationError, match="either runtime= or options"):
        X402Meter(nothing, runtime=first.runtime, pay_to=PAY_TO, price_per_token="1")
    assert X402Meter(nothing, runtime=first.runtime, **{}).runtime is first.runtime


def test_the_litestar_plugin_hands_its_runtime_to_every_route() -> None:
    plugin = X402MeterPlugin(pay_to=PAY_TO, price_per_token="1", store="memory://")
    routes = [plugin.middleware(nothing), plugin.middleware(nothing)]
    assert all(isinstance(meter, X402Meter) for meter in routes)
    assert {id(typing.cast(X402Meter, meter).runtime) for meter in routes} == {id(plugin.runtime)}


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"recheck_every": -1}, "recheck_every"),
        ({"recheck_timeout": 0}, "recheck_timeout"),
        ({"recheck_timeout": -1}, "recheck_timeout"),
        ({"expiry_margin": 6}, "expiry_margin"),
        ({"expiry_margin": 300}, "expiry_margin"),
        ({"max_timeout_seconds": 30, "expiry_margin": 30}, "expiry_margin"),
        ({"voided_payer_seconds": -1}, "voided_payer_seconds"),
    ],
)
def test_the_recheck_and_deadline_options_are_checked(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        MeterConfig.create(pay_to=PAY_TO, price_per_token="0.000002", **options)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"session_deposit_multiple": 0}, "session_deposit_multiple"),
        ({"session_deposit_multiple": 2.5}, "session_deposit_multiple"),
        ({"session_withdraw_delay": 899}, "session_withdraw_delay"),
        ({"session_withdraw_delay": 30 * 24 * 3600 + 1}, "session_withdraw_delay"),
        ({"session_state_ttl": 0}, "session_state_ttl"),
        ({"session_state_ttl": 900}, "session_state_ttl"),
        ({"session_receiver_authorizer": "0x" + "44" * 20}, "session_receiver_authorizer"),
        ({"schemes": ("batch-settlement", "permit")}, "schemes"),
    ],
)
def test_the_session_options_are_checked(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        MeterConfig.create(pay_to=PAY_TO, price_per_token="0.000002", **options)


def test_sessions_keep_their_channels_beside_the_store_unless_told_otherwise(
    tmp_path: Path,
) -> None:
    from x402_meter.store import MemoryChannelStore, SQLiteChannelStore
    from x402_meter.store.channel_redis import RedisChannelStore

    def channels(**options: Any) -> object:
        meter = X402Meter(
            nothing,
            pay_to=PAY_TO,
            price_per_token="1",
            schemes=("upto", "batch-settlement"),
            **options,
        )
        return meter.runtime.channels

    beside = channels(store=f"sqlite:///{tmp_path}/ledger.db")
    assert isinstance(beside, SQLiteChannelStore)
    assert beside.path == tmp_path / "ledger.db"
    assert isinstance(channels(store="memory://"), MemoryChannelStore)
    assert isinstance(channels(store="memory://", channel_store="memory://"), MemoryChannelStore)
    assert (
        X402Meter(nothing, pay_to=PAY_TO, price_per_token="1", store="memory://").runtime.channels
        is None
    )
    beside_redis = channels(store="redis://127.0.0.1:1/0")  # not connected until used
    assert isinstance(beside_redis, RedisChannelStore)
    assert beside_redis.url == "redis://127.0.0.1:1/0"
