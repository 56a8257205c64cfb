"""Real processes for the fault-injection tests: uvicorn servers and a facilitator we can stop."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from x402_meter.devstack import LocalStack
from x402_meter.devstack.accounts import dev_account
from x402_meter.devstack.processes import ChildProcess, uvicorn_ready
from x402_meter.devstack.stack import start_facilitator_process, wait_for_facilitator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: ChildProcess


@contextmanager
def uvicorn_server(
    stack: LocalStack,
    store_url: str,
    log_path: Path,
    *,
    workers: int = 1,
    facilitator_url: str | None = None,
    uvicorn_args: Sequence[str] = (),
    command_prefix: Sequence[str] = (),
    meter_options: dict[str, Any] | None = None,
) -> Iterator[Server]:
    """tests/fault_app.py in its own uvicorn process (or ``workers`` of them on
    one port); ``uvicorn_args`` are added to uvicorn's command line (``--root-path``...);
    ``command_prefix`` runs it under another command (``unshare``, for another clock);
    ``meter_options`` are added to its middleware's options."""
    port = free_port()
    env = {
        **os.environ,
        "X402_TEST_STACK": json.dumps(stack.as_json_dict()),
        "X402_TEST_STORE": store_url,
    }
    if facilitator_url:
        env["X402_TEST_FACILITATOR_URL"] = facilitator_url
    if meter_options:
        env["X402_TEST_METER_OPTIONS"] = json.dumps(meter_options)
    args = [
        *command_prefix,
        sys.executable,
        "-m",
        "uvicorn",
        "tests.fault_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if workers > 1:
        args += ["--workers", str(workers)]
    args += uvicorn_args
    process = ChildProcess(args, name="uvicorn", env=env, log_path=log_path, merge_stderr=True)
    try:
        process.wait_for_line(uvicorn_ready(workers), timeout=60)
        yield Server(f"http://127.0.0.1:{port}", process)
    finally:
        process.stop()


@contextmanager
def own_facilitator(
    stack: LocalStack,
    log_path: Path,
    port: int,
    *,
    pay_to: Sequence[str] | None = None,
    receiver_authorizer_key: str | None = None,
) -> Iterator[ChildProcess]:
    """A second facilitator on ``port``, for tests that stop it or that limit its payees
    (``pay_to``; None: any). It takes the stack's API key and signs with its own dev
    account (9): two processes sending transactions from one account would race for nonces.
    ``receiver_authorizer_key``: the batch-settlement key it signs claims and refunds with."""
    process = start_facilitator_process(
        rpc_url=stack.rpc_url,
        network=stack.network,
        private_key=dev_account(9).private_key,
        api_keys=[stack.facilitator_api_key],
        pay_to=pay_to,
        receiver_authorizer_key=receiver_authorizer_key,
        log_path=log_path,
        port=port,
    )
    try:
        wait_for_facilitator(process)
        yield process
    finally:
        process.stop()
