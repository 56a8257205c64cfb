"""The tutorial (docs/first-endpoint.md) as a reader runs it: its two files, unchanged.

``examples/tutorial/server.py`` runs under uvicorn in its own process and
``examples/tutorial/pay.py`` runs as a process, both configured only by the ``X402_...``
variables the page tells the reader to set, against the local stack. The page's expected
output must be what ``pay.py`` prints, and the receipt it prints must be a settlement the
chain holds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Final

import pytest
from eth_account import Account
from web3 import Web3

from tests.examples.conftest import FUNDING, new_funded_payer
from tests.fault_harness import free_port
from x402_meter.devstack import LocalStack, token_balance
from x402_meter.devstack.processes import ChildProcess, uvicorn_ready

ROOT: Final = Path(__file__).resolve().parents[2]
TUTORIAL: Final = ROOT / "examples" / "tutorial"
PAGE: Final = ROOT / "docs" / "first-endpoint.md"
TRANSFER: Final = Web3.keccak(text="Transfer(address,address,uint256)")


def expected_output() -> list[str]:
    """The ```text block that follows "python pay.py" on the page."""
    page = PAGE.read_text()
    match = re.search(r"python pay\.py\n```\n\n.*?```text\n(.*?)```", page, re.DOTALL)
    assert match is not None, "the page shows no output for python pay.py"
    return match[1].splitlines()


def tutorial_env(stack: LocalStack, payer_key: str, seller: str, tmp_path: Path) -> dict[str, str]:
    """The variables the page has the reader set (as ``x402-meter dev`` prints them)."""
    return {
        **os.environ,
        "X402_NETWORK": stack.network,
        "X402_RPC_URL": stack.rpc_url,
        "X402_FACILITATOR_URL": stack.facilitator_url,
        "X402_FACILITATOR_API_KEY": stack.facilitator_api_key,
        "X402_ASSET": stack.asset,
        "X402_ASSET_NAME": stack.asset_name,
        "X402_ASSET_VERSION": stack.asset_version,
        "X402_ASSET_DECIMALS": str(stack.asset_decimals),
        "X402_PAY_TO": seller,
        "X402_PAYER_PRIVATE_KEY": payer_key,
        # not on the page: keep the server's ledger out of the source tree
        "X402_METER_STORE": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
    }


@pytest.fixture
def server_env(
    x402_local_stack: LocalStack, tmp_path: Path
) -> Iterator[tuple[dict[str, str], str]]:
    """server.py served by uvicorn (a process) for a fresh seller; (env, payer address)."""
    payer = new_funded_payer(x402_local_stack)
    seller = Account.create().address
    env = tutorial_env(x402_local_stack, payer.key.hex(), seller, tmp_path)
    port = free_port()
    server = ChildProcess(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "server:app",
            "--app-dir",
            str(TUTORIAL),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        name="tutorial-server",
        env=env,
        log_path=tmp_path / "server.log",
        merge_stderr=True,
    )
    try:
        server.wait_for_line(uvicorn_ready(), timeout=60)
        yield {**env, "LLM_BASE_URL": f"http://127.0.0.1:{port}/v1"}, payer.address
    finally:
        server.stop()


def test_the_page_shows_the_tutorial_files_themselves() -> None:
    page = PAGE.read_text()
    assert '--8<-- "examples/tutorial/server.py"' in page
    assert '--8<-- "examples/tutorial/pay.py"' in page


def test_pay_py_prints_the_pages_output_and_the_receipt_is_settled_on_chain(
    x402_local_stack: LocalStack, server_env: tuple[dict[str, str], str]
) -> None:
    env, payer = server_env
    result = subprocess.run(
        [sys.executable, str(TUTORIAL / "pay.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    expected = expected_output()
    assert len(printed) == len(expected), result.stdout
    for line, shown in zip(printed[:-1], expected[:-1], strict=True):
        assert line == shown
    assert expected[-1] == "transaction: 0x…"  # the one line that differs per run
    tx = re.fullmatch(r"transaction: (0x[0-9a-f]{64})", printed[-1])
    assert tx is not None, printed[-1]

    cost = re.search(r"= (\d+\.\d+) USDC$", printed[-2])
    assert cost is not None, printed[-2]
    amount = int(Decimal(cost[1]).scaleb(x402_local_stack.asset_decimals))
    w3 = x402_local_stack.web3()
    mined = w3.eth.get_transaction_receipt(tx[1])  # type: ignore[arg-type]
    assert mined["status"] == 1
    seller = env["X402_PAY_TO"]
    transfers = [
        (
            "0x" + log["topics"][1].hex()[-40:],
            "0x" + log["topics"][2].hex()[-40:],
            int(log["data"].hex(), 16),
        )
        for log in mined["logs"]
        if log["topics"][0] == TRANSFER
    ]
    assert transfers == [(payer.lower(), seller.lower(), amount)]
    assert token_balance(w3, x402_local_stack.asset, seller) == amount
    assert token_balance(w3, x402_local_stack.asset, payer) == FUNDING - amount
