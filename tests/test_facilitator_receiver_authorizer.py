"""``x402-meter facilitator``'s receiver-authorizer key: given, advertised; absent, none.

Real processes on the local stack's chain. The key is a secret: it comes from the
environment or a file, never from the command line, and appears in no output.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.security.test_facilitator_auth import run_facilitator_cli
from x402_meter.devstack import LocalStack
from x402_meter.devstack.accounts import RECEIVER_AUTHORIZER, dev_account
from x402_meter.devstack.processes import ChildProcess
from x402_meter.devstack.stack import wait_for_facilitator
from x402_meter.facilitator_access import API_KEYS_ENV
from x402_meter.facilitator_authorizer import RECEIVER_AUTHORIZER_KEY_ENV
from x402_meter.facilitator_server import PRIVATE_KEY_ENV

KEY = RECEIVER_AUTHORIZER.private_key  # anvil's public dev key


@contextmanager
def facilitator(
    stack: LocalStack, log_path: Path, *flags: str, env: dict[str, str]
) -> Iterator[str]:
    """``x402-meter facilitator`` with ``flags`` and ``env`` only (no inherited X402_ keys)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("X402_FACILITATOR_")}
    clean |= {PRIVATE_KEY_ENV: dev_account(9).private_key, API_KEYS_ENV: "k" * 32, **env}
    args = [sys.executable, "-m", "x402_meter", "facilitator", "--rpc-url", stack.rpc_url]
    args += ["--network", stack.network, "--port", "0", "--any-pay-to", *flags]
    process = ChildProcess(args, name="facilitator", env=clean, log_path=log_path)
    try:
        yield wait_for_facilitator(process)
    finally:
        process.stop()


def channel_kind(url: str) -> dict[str, Any]:
    kinds = httpx.get(f"{url}/supported", timeout=10).json()["kinds"]
    (kind,) = [k for k in kinds if k["scheme"] == "batch-settlement"]
    return dict(kind)


def test_a_key_file_makes_its_address_the_advertised_receiver_authorizer(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    key_file = tmp_path / "authorizer.key"
    key_file.write_text(f"# batch-settlement receiver authorizer\n{KEY}\n")
    log = tmp_path / "f.log"
    with facilitator(
        x402_local_stack, log, "--receiver-authorizer-key-file", str(key_file), env={}
    ) as url:
        assert channel_kind(url)["extra"] == {"receiverAuthorizer": RECEIVER_AUTHORIZER.address}
    assert RECEIVER_AUTHORIZER.address in log.read_text()  # the announce line names it
    assert KEY.removeprefix("0x") not in log.read_text()


def test_a_key_from_the_environment_is_advertised_too(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    env = {RECEIVER_AUTHORIZER_KEY_ENV: KEY}
    with facilitator(x402_local_stack, tmp_path / "f.log", env=env) as url:
        assert channel_kind(url)["extra"] == {"receiverAuthorizer": RECEIVER_AUTHORIZER.address}


def test_without_a_key_no_receiver_authorizer_is_advertised(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """Servers then sign their own claims and refunds (the SDK's server refuses to start
    without a key of its own when the facilitator advertises none)."""
    with facilitator(x402_local_stack, tmp_path / "f.log", env={}) as url:
        assert "extra" not in channel_kind(url)


def test_a_malformed_key_is_refused_at_startup_without_being_echoed(
    x402_local_stack: LocalStack,
) -> None:
    bad = KEY[:-2]  # 62 hex digits
    stderr = run_facilitator_cli(
        x402_local_stack,
        "--any-pay-to",
        extra_env={API_KEYS_ENV: "k" * 32, RECEIVER_AUTHORIZER_KEY_ENV: bad},
    )
    assert "receiver-authorizer key must be" in stderr
    assert bad.removeprefix("0x")[:16] not in stderr


def test_a_key_in_the_environment_and_a_file_contradict(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    key_file = tmp_path / "authorizer.key"
    key_file.write_text(KEY)
    stderr = run_facilitator_cli(
        x402_local_stack,
        "--any-pay-to",
        "--receiver-authorizer-key-file",
        str(key_file),
        extra_env={API_KEYS_ENV: "k" * 32, RECEIVER_AUTHORIZER_KEY_ENV: KEY},
    )
    assert "contradict" in stderr
    assert KEY.removeprefix("0x") not in stderr
