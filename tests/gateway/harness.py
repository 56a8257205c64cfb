"""Real processes for the gateway's tests: the stub providers and ``x402-meter gateway``.

The stub upstream runs in its own uvicorn process and appends every request it gets to a
JSONL file, so a test can say what reached the upstream and what never did. The gateway
runs as users run it (``python -m x402_meter gateway --config FILE``), configured for the
local stack by the environment ``x402-meter dev`` exports; its whole output (logs, access
lines) goes to a file the tests grep.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from eth_account import Account
from eth_account.signers.local import LocalAccount

from tests.fault_harness import free_port
from x402_meter import Asset
from x402_meter.client import PayingAsyncClient, Wallet
from x402_meter.devstack import LocalStack
from x402_meter.devstack.dev_report import exports
from x402_meter.devstack.processes import ChildProcess, uvicorn_ready

CHAT: Final = "/v1/chat/completions"
QUESTION: Final = {"model": "local-stub", "messages": [{"role": "user", "content": "hi"}]}
UPSTREAM_KEY: Final = "sk-stub-UPSTREAM-secret-7f3a9c2e51d84b06"
"""The upstream's key: it must never reach a caller or a log line."""
UPSTREAM_KEY_ENV: Final = "STUB_UPSTREAM_KEY"
START_SECONDS: Final = 60  # a bound against a hang, not a timing assertion


def closed_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def paying_client(stack: LocalStack, payer: LocalAccount) -> PayingAsyncClient:
    """The paying client a caller of the gateway uses, for the stack's token."""
    asset = Asset(stack.asset, stack.asset_name, stack.asset_version, stack.asset_decimals)
    return PayingAsyncClient(wallet=Wallet(payer, network=stack.network, asset=asset))


@dataclass
class StubUpstream:
    url: str
    record: Path
    process: ChildProcess

    def requests(self) -> list[dict[str, Any]]:
        """Every request the stub got so far, oldest first."""
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        return [json.loads(line) for line in lines if line]

    def clear(self) -> None:
        self.record.write_text("")


@contextmanager
def stub_upstream(directory: Path, *, api_key: str = UPSTREAM_KEY) -> Iterator[StubUpstream]:
    port = free_port()
    record = directory / "upstream-requests.jsonl"
    record.write_text("")
    args = [
        sys.executable,
        "-m",
        "x402_meter.devstack.stub_upstream",
        "--port",
        str(port),
        "--api-key-env",
        UPSTREAM_KEY_ENV,
        "--record",
        str(record),
    ]
    env = {**os.environ, UPSTREAM_KEY_ENV: api_key}
    process = ChildProcess(
        args, name="stub-upstream", env=env, log_path=directory / "upstream.log", merge_stderr=True
    )
    try:
        process.wait_for_line(uvicorn_ready(), timeout=START_SECONDS)
        yield StubUpstream(f"http://127.0.0.1:{port}", record, process)
    finally:
        process.stop()


@dataclass
class GatewayProcess:
    url: str
    log: Path
    config: Path
    seller: str
    process: ChildProcess

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def gateway_env(stack: LocalStack, seller: str, store: str, **extra: str) -> dict[str, str]:
    """What the gateway's shell has: the stack's exports, the seller, the store, the key."""
    env = {**os.environ, **exports(stack), "X402_PAY_TO": seller, "X402_METER_STORE": store}
    env.pop("X402_PAYER_PRIVATE_KEY", None)
    return {**env, UPSTREAM_KEY_ENV: UPSTREAM_KEY, **extra}


@contextmanager
def gateway_process(
    stack: LocalStack,
    directory: Path,
    config_text: str,
    *,
    workers: int = 1,
    store: str | None = None,
    env: dict[str, str] | None = None,
    seller: str | None = None,
) -> Iterator[GatewayProcess]:
    """``x402-meter gateway`` with ``config_text`` as its gateway.toml, on a free port."""
    port = free_port()
    config = directory / "gateway.toml"
    config.write_text(config_text)
    seller = seller or Account.create().address
    store = store or f"sqlite:///{directory / 'ledger.sqlite3'}"
    args = [sys.executable, "-m", "x402_meter", "gateway", "--config", str(config)]
    args += ["--port", str(port), "--workers", str(workers)]
    log = directory / "gateway.log"
    process = ChildProcess(
        args,
        name="gateway",
        env=gateway_env(stack, seller, store, **(env or {})),
        log_path=log,
        merge_stderr=True,
    )
    try:
        process.wait_for_line(uvicorn_ready(workers), timeout=START_SECONDS)
        yield GatewayProcess(f"http://127.0.0.1:{port}", log, config, seller, process)
    finally:
        process.stop()


def openai_config(upstream_url: str, **upstream: str) -> str:
    """A gateway.toml in front of the stub as an OpenAI-compatible upstream (and as
    Anthropic, under /anthropic), with a few plans the tests use."""
    extra = "".join(f"{key} = {value}\n" for key, value in upstream.items())
    return f"""
[gateway]
schemes = ["upto", "exact"]
max_request_body = 65536

[upstreams.openai]
kind = "openai"
base_url = "{upstream_url}"
api_key_env = "{UPSTREAM_KEY_ENV}"
paths = ["/v1/chat/completions", "/v1/responses", "/v1/embeddings"]
{extra}
[[upstreams.openai.plans]]
models = ["local-stub", "stub-*"]
price_per_million = {{ input = "1", output = "2" }}
max_tokens = 512
defaults = {{ temperature = 0.5 }}
pinned = {{ n = 1 }}

[[upstreams.openai.plans]]
models = ["pinned-override"]
price_per_token = "0.000001"
pinned = {{ temperature = 0, "metadata.tier" = "paid" }}
on_override = "override"

[[upstreams.openai.plans]]
models = ["flat-stub"]
per_request = "0.002"

[[upstreams.openai.plans]]
models = ["capped-stub"]
price_per_million = {{ input = "1", output = "2" }}
max_tokens = 5

[upstreams.anthropic]
kind = "anthropic"
base_url = "{upstream_url}"
api_key_env = "{UPSTREAM_KEY_ENV}"
prefix = "/anthropic"
{extra}
[[upstreams.anthropic.plans]]
models = ["claude-stub*"]
price_per_million = {{ input = "3", output = "15" }}
max_tokens = 1024

[upstreams.ollama]
kind = "ollama"
base_url = "{upstream_url}"
api_key_env = "{UPSTREAM_KEY_ENV}"
prefix = "/ollama"
paths = ["/api/chat"]
default_model = "llama-stub"
{extra}
[[upstreams.ollama.plans]]
models = ["llama-stub"]
price_per_million = {{ input = "1", output = "2" }}
per_request = "0.0001"
pinned = {{ "options.num_predict" = 256 }}
on_override = "override"
"""
