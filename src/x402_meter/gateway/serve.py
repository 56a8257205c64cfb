"""``x402-meter gateway``: check the config, then serve it with uvicorn (workers too).

The parent checks the configuration first, so a bad one stops the command with one line
(exit status 2) before anything listens. Each uvicorn worker builds its gateway from the
same file (``X402_GATEWAY_CONFIG``). On SIGTERM uvicorn stops accepting, waits up to
``shutdown_timeout`` for the answers in flight, then each worker's lifespan shutdown waits
for its settlements.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from x402_meter.errors import GatewayConfigError
from x402_meter.gateway.app import Gateway
from x402_meter.gateway.config import CONFIG_ENV, GatewayConfig, load_config


def configure_logging() -> None:
    """Access lines as they are (JSON), everything else with its level and logger."""
    root = logging.getLogger("x402_meter")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    access = logging.getLogger("x402_meter.gateway.access")
    access_handler = logging.StreamHandler(sys.stdout)
    access_handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(access_handler)
    access.propagate = False


def app_from_env() -> Gateway:
    """uvicorn's factory in each worker: the gateway of ``$X402_GATEWAY_CONFIG``."""
    configure_logging()
    return Gateway(load_config(os.environ[CONFIG_ENV], os.environ))


def check_runnable(config: GatewayConfig, workers: int) -> None:
    """What the config cannot tell by itself: a store the workers can share, and the
    packages it needs installed."""
    import importlib.util

    if workers > 1 and config.store.startswith("memory:"):
        raise GatewayConfigError(
            "gateway.store: several workers need a shared store (sqlite:///path or"
            " redis://host), not memory://"
        )
    channels = config.sessions.channel_store if config.sessions is not None else None
    if workers > 1 and channels is not None and channels.startswith("memory:"):
        raise GatewayConfigError(
            "gateway.sessions.channel_store: several workers need shared channels (sqlite:///path"
            " or redis://host), not memory://"
        )
    if config.metrics and importlib.util.find_spec("prometheus_client") is None:
        raise GatewayConfigError(
            "gateway.metrics needs prometheus_client: pip install 'x402-meter[metrics]',"
            " or set metrics = false"
        )
    if importlib.util.find_spec("uvicorn") is None:
        raise GatewayConfigError("the gateway runs on uvicorn: pip install 'x402-meter[devstack]'")


def serve(config_path: str, *, host: str, port: int, workers: int) -> None:
    import uvicorn

    config = load_config(config_path, os.environ)
    check_runnable(config, workers)
    os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
    uvicorn.run(
        "x402_meter.gateway.serve:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,  # the gateway writes its own, without query strings or headers
        timeout_graceful_shutdown=int(config.shutdown_timeout),
        lifespan="on",
        log_level="info",
    )
