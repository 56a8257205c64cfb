"""`x402-meter dev` starts the whole stack, reports it once, and leaves nothing behind.

What it prints is what a developer pastes: the funded dev accounts' keys and export lines
that an example app and a paying client run on, on ports that can be fixed so that a
restarted stack keeps them. Setup problems are one line and exit status 2.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from eth_account import Account
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    PERMIT2_DEPOSIT_COLLECTOR_ADDRESS,
)

from tests.dev_command import dev_stack
from x402_meter.devstack.accounts import ANVIL_DEV_PRIVATE_KEYS

EXPECTED_KEYS = {
    "rpc_url",
    "facilitator_url",
    "chain_id",
    "network",
    "asset",
    "asset_name",
    "asset_version",
    "permit2",
    "upto_proxy",
    "batch_settlement",
    "erc3009_deposit_collector",
    "permit2_deposit_collector",
    "pay_to",
    "receiver_authorizer",
    "receiver_authorizer_private_key",
    "payer_private_keys",
    "facilitator_api_key",
}


def children_of(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait on a pidfd (readable once the process has terminated); no polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def port_is_closed(url: str) -> bool:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.socket() as sock:
        return sock.connect_ex((parts.hostname, parts.port)) != 0


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc and uses pidfds")
def test_dev_prints_one_json_line_and_stops_everything_on_sigterm() -> None:
    with dev_stack() as (process, info):
        assert set(info) >= EXPECTED_KEYS
        assert info["network"] == f"eip155:{info['chain_id']}"
        assert_payers_and_env(info)
        supported = httpx.get(f"{info['facilitator_url']}/supported").json()
        assert {kind["scheme"] for kind in supported["kinds"]} == {
            "exact",
            "upto",
            "batch-settlement",
        }
        assert_batch_settlement(info, supported)
        verify = f"{info['facilitator_url']}/verify"
        assert httpx.post(verify, json={}).status_code == 401  # the printed key is required
        key = {"Authorization": f"Bearer {info['facilitator_api_key']}"}
        assert httpx.post(verify, json={}, headers=key).status_code == 400  # and enough
        children = children_of(process.pid)
        assert len(children) == 2  # anvil and the facilitator

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert process.stdout is not None
        assert process.stdout.read() == ""  # exactly one line on stdout

    assert all(wait_for_exit(child, timeout=0) for child in children)
    assert port_is_closed(str(info["rpc_url"]))
    assert port_is_closed(str(info["facilitator_url"]))


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc and uses pidfds")
def test_children_die_with_a_killed_dev_process() -> None:
    with dev_stack() as (process, info):
        children = children_of(process.pid)
        process.kill()  # SIGKILL: no cleanup code runs in the parent
        process.wait()

    assert all(wait_for_exit(child, timeout=10) for child in children)
    assert port_is_closed(str(info["rpc_url"]))
    assert port_is_closed(str(info["facilitator_url"]))


def assert_batch_settlement(info: dict[str, object], supported: dict[str, Any]) -> None:
    """The channel contracts at the SDK's addresses, with code on the chain, and the
    facilitator's receiver authorizer: the advertised one, its key labelled public."""
    assert (info["batch_settlement"], info["erc3009_deposit_collector"]) == (
        BATCH_SETTLEMENT_ADDRESS,
        ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    )
    assert info["permit2_deposit_collector"] == PERMIT2_DEPOSIT_COLLECTOR_ADDRESS
    w3 = Web3(Web3.HTTPProvider(str(info["rpc_url"])))
    for name in ("batch_settlement", "erc3009_deposit_collector", "permit2_deposit_collector"):
        assert len(w3.eth.get_code(Web3.to_checksum_address(str(info[name])))) > 0, name
    key = str(info["receiver_authorizer_private_key"])
    assert Account.from_key(key).address == info["receiver_authorizer"]
    assert key in ANVIL_DEV_PRIVATE_KEYS
    assert "PUBLIC" in str(info["receiver_authorizer_key_note"])
    (kind,) = [k for k in supported["kinds"] if k["scheme"] == "batch-settlement"]
    assert kind["extra"] == {"receiverAuthorizer": info["receiver_authorizer"]}


def assert_payers_and_env(info: dict[str, object]) -> None:
    """The JSON's added fields: each payer's key is its address's, and the exports agree."""
    payers = info["payers"]
    assert isinstance(payers, list)
    assert [payer["private_key"] for payer in payers] == info["payer_private_keys"]
    for payer in payers:
        assert Account.from_key(payer["private_key"]).address == payer["address"]
    assert "PUBLIC" in str(info["payer_keys_note"])
    assert info["env"] == {
        "X402_NETWORK": info["network"],
        "X402_RPC_URL": info["rpc_url"],
        "X402_FACILITATOR_URL": info["facilitator_url"],
        "X402_FACILITATOR_API_KEY": info["facilitator_api_key"],
        "X402_PAY_TO": info["pay_to"],
        "X402_ASSET": info["asset"],
        "X402_ASSET_NAME": info["asset_name"],
        "X402_ASSET_VERSION": info["asset_version"],
        "X402_ASSET_DECIMALS": str(info["asset_decimals"]),
        "X402_PAYER_PRIVATE_KEY": payers[0]["private_key"],
    }
