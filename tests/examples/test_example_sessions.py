"""``X402_SESSIONS``: whether the examples' per-token routes offer sessions beside ``upto``.

On by default only on the local chain, whose facilitator supports ``batch-settlement``; a
facilitator elsewhere may not (the meter would then answer 503), so there it is asked for.
"""

from __future__ import annotations

import pytest

from examples.common.settings import Settings
from examples.fastapi_app.chat import page_config
from x402_meter import ConfigurationError

PAY_TO = "0x" + "1" * 40
LOCAL = "eip155:31337"
BASE = "eip155:8453"
ASSET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"  # the local stack's token


@pytest.mark.parametrize(
    ("network", "switch", "schemes"),
    [
        (LOCAL, None, ("upto", "batch-settlement")),
        (BASE, None, ("upto",)),
        (BASE, "1", ("upto", "batch-settlement")),
        (LOCAL, "0", ("upto",)),
        (LOCAL, "off", ("upto",)),
    ],
)
def test_sessions_are_offered_on_the_local_chain_unless_told_otherwise(
    network: str, switch: str | None, schemes: tuple[str, ...]
) -> None:
    env = {"X402_PAY_TO": PAY_TO, "X402_NETWORK": network, "X402_ASSET": ASSET}
    if switch is not None:
        env["X402_SESSIONS"] = switch
    settings = Settings.from_env(env)
    assert settings.per_token_schemes == schemes
    config = page_config(settings)
    assert config["sessions"] == (len(schemes) == 2)
    # the page pays by session only the per-token plans: the flat ones are paid with exact
    assert {p["id"]: p["sessions"] for p in config["plans"]} == {
        "local-stub:token": len(schemes) == 2,
        "local-stub-pro:token": len(schemes) == 2,
        "local-stub:flat": False,
        "local-stub-pro:flat": False,
    }


def test_a_sessions_switch_that_is_neither_on_nor_off_stops_the_example_at_startup() -> None:
    with pytest.raises(ConfigurationError, match="X402_SESSIONS"):
        Settings.from_env({"X402_PAY_TO": PAY_TO, "X402_SESSIONS": "maybe"})
