"""What `x402-meter dev` prints is enough to run an example app and pay it, and it can be kept.

The export lines are run through a real shell, the example app is configured from nothing
but them, and the printed payer key pays it on the stack's own chain. A restart on the same
ports with the same key prints the same exports.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from typing import Final

import anyio
import openai
import pytest
from eth_account import Account
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
)

from examples.common.settings import Settings
from examples.fastapi_app.app import create_app
from tests.dev_command import dev_process, dev_stack, free_port_pair
from x402_meter import MemoryStore
from x402_meter.client import PayingClient, Receipt
from x402_meter.devstack import token_balance
from x402_meter.devstack.asgi_server import serving

pytestmark = pytest.mark.anyio

DEV_KEY: Final = "a-fixed-local-dev-key-for-this-test"
PER_TOKEN: Final = 2  # atomic units: local-stub at the examples' default X402_PRICES
ACCOUNT_LINE: Final = re.compile(r"^  #(\d+)  (0x[0-9a-fA-F]{40})  (0x[0-9a-f]{64})$", re.MULTILINE)
AUTHORIZER_LINES: Final = re.compile(
    r"^  authorizer   (?P<address>0x[0-9a-fA-F]{40})  .*\n"
    r"^  its key      (?P<key>0x[0-9a-f]{64})  \(.*a PUBLIC key.*\)$",
    re.MULTILINE,
)
QUESTION: Final = [{"role": "user", "content": "What does x402 do?"}]


def read_report(process: subprocess.Popen[str]) -> str:
    """The human-readable report, up to its last export line."""
    assert process.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("export X402_PAYER_PRIVATE_KEY="):
        line = process.stdout.readline()
        assert line, "x402-meter dev exited before printing its exports:\n" + "".join(lines)
        lines.append(line)
    return "".join(lines)


def shell_exports(report: str) -> dict[str, str]:
    """What bash sees after running the report's export (and comment) lines, as pasted."""
    pasted = "\n".join(
        line for line in report.splitlines() if line.startswith(("export ", "# anvil"))
    )
    env = subprocess.run(
        ["bash", "-c", f"set -eu\n{pasted}\nexec env -0"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pairs = (entry.partition("=") for entry in env.split("\0") if entry)
    return {name: value for name, _, value in pairs if name.startswith("X402_")}


def balances(env: dict[str, str], *addresses: str) -> tuple[int, ...]:
    """Token balances, read from the exported RPC URL and asset."""
    w3 = Web3(Web3.HTTPProvider(env["X402_RPC_URL"]))
    return tuple(token_balance(w3, env["X402_ASSET"], address) for address in addresses)


def pay_once(base: str, env: dict[str, str], settings: Settings) -> tuple[str | None, Receipt]:
    """One chat completion through the openai package, paid with the exported payer key."""
    with PayingClient(
        env["X402_PAYER_PRIVATE_KEY"], network=env["X402_NETWORK"], asset=settings.asset
    ) as http:
        llm = openai.OpenAI(base_url=f"{base}/v1", api_key="x402", http_client=http)
        answer = llm.chat.completions.create(model="local-stub", messages=QUESTION)  # type: ignore[arg-type]
        return answer.choices[0].message.content, http.receipt(wait=20)


async def test_printed_keys_and_exports_pay_an_example_on_ports_kept_across_restarts() -> None:
    base = free_port_pair()
    with dev_process("--port", str(base), "--api-key", DEV_KEY) as process:
        report = read_report(process)
        env = shell_exports(report)

        # Every funded dev account is printed with its key, labelled public.
        assert "PUBLIC" in report
        accounts = {int(i): (address, key) for i, address, key in ACCOUNT_LINE.findall(report)}
        assert sorted(accounts) == list(range(3, 9))
        assert all(Account.from_key(key).address == address for address, key in accounts.values())
        assert env["X402_PAYER_PRIVATE_KEY"] == accounts[3][1]
        # The channel contracts, and the facilitator's receiver authorizer with its key,
        # labelled public.
        for address in (BATCH_SETTLEMENT_ADDRESS, ERC3009_DEPOSIT_COLLECTOR_ADDRESS):
            assert address in report
        authorizer = AUTHORIZER_LINES.search(report)
        assert authorizer is not None, report
        assert Account.from_key(authorizer["key"]).address == authorizer["address"]
        # The fixed ports and key are the ones asked for, quoted values survive the shell.
        assert env["X402_RPC_URL"] == f"http://127.0.0.1:{base}"
        assert env["X402_FACILITATOR_URL"] == f"http://127.0.0.1:{base + 1}"
        assert env["X402_FACILITATOR_API_KEY"] == DEV_KEY
        assert env["X402_ASSET_NAME"] == "USD Coin"

        # The example app runs on the exports alone, and the exported payer key pays it.
        settings = Settings.from_env(env)
        app = create_app(settings, store=MemoryStore())
        payer = Account.from_key(env["X402_PAYER_PRIVATE_KEY"]).address
        before = balances(env, payer, settings.pay_to)
        async with serving(app) as served:
            content, receipt = await anyio.to_thread.run_sync(pay_once, served, env, settings)
        assert content
        assert receipt.status == "settled", receipt
        assert receipt.amount is not None
        assert receipt.input_tokens is not None
        assert receipt.output_tokens is not None
        assert receipt.amount == (receipt.input_tokens + receipt.output_tokens) * PER_TOKEN
        amount = receipt.amount
        assert balances(env, payer, settings.pay_to) == (before[0] - amount, before[1] + amount)

        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(timeout=30) == 0

    # Restarted with the same ports (given one by one) and key (from the environment):
    # the same exports, so whatever was pasted keeps working.
    again = {**os.environ, "X402_METER_DEV_API_KEY": DEV_KEY}
    ports = ["--rpc-port", str(base), "--facilitator-port", str(base + 1)]
    with dev_stack(*ports, env=again) as (_, info):
        assert info["env"] == env
        assert json.dumps(info["env"])  # and --json carries them for scripts
