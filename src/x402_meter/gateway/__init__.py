"""``x402-meter gateway``: a paid gateway in front of an LLM API, configured by a TOML file.

``docs/gateway.md`` shows it in use; ``docs/design/gateway.md`` describes its parts.
"""

from x402_meter.gateway.app import Gateway, plan_prices
from x402_meter.gateway.config import GatewayConfig, GatewayConfigError, load_config, parse_config

__all__ = [
    "Gateway",
    "GatewayConfig",
    "GatewayConfigError",
    "load_config",
    "parse_config",
    "plan_prices",
]
