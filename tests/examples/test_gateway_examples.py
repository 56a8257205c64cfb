"""The gateway.toml files in examples/gateway/ stay valid: each loads, as the docs show it."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

from x402_meter.gateway import load_config

EXAMPLES: Final = Path(__file__).resolve().parents[2] / "examples" / "gateway"
ENV: Final = {
    "OPENAI_API_KEY": "sk-example",
    "STUB_KEY": "stub-secret",
    "X402_PAY_TO": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",  # as x402-meter dev exports
    "X402_NETWORK": "eip155:31337",
    "X402_ASSET": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
}


@pytest.mark.parametrize("name", ["openai.toml", "local.toml", "stub.toml", "sessions.toml"])
def test_each_example_config_loads(name: str) -> None:
    config = load_config(EXAMPLES / name, ENV)
    assert config.routes


def test_the_examples_are_all_tested() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.toml")) == [
        "local.toml",
        "openai.toml",
        "sessions.toml",
        "stub.toml",
    ]


def test_the_openai_example_prices_each_path_by_its_plans() -> None:
    config = load_config(EXAMPLES / "openai.toml", ENV)
    embeddings = config.routes["/v1/embeddings"].plans
    assert embeddings.labels == ["text-embedding-3-small"]
    assert config.routes["/v1/chat/completions"].plans.match("gpt-4o-2024-08-06") is not None


def test_the_sessions_example_offers_sessions_and_claims_hourly() -> None:
    options = load_config(EXAMPLES / "sessions.toml", ENV).meter_options()
    assert options["schemes"] == ("upto", "batch-settlement")
    assert (options["session_withdraw_delay"], options["session_claim_interval"]) == (86400, 3600)
