"""The whole local x402 stack: dev chain, contracts, funded payers and a facilitator.

``local_stack()`` is a context manager; ``x402-meter dev`` and the pytest fixture
``x402_local_stack`` are thin wrappers around it. The facilitator runs in its own process
(the SDK's facilitator does blocking web3 calls), started while the contracts deploy.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from web3 import Web3
from x402.mechanisms.evm.constants import PERMIT2_ADDRESS, X402_UPTO_PERMIT2_PROXY_ADDRESS

from x402_meter.devstack.accounts import FACILITATOR, PAYERS, SELLER
from x402_meter.devstack.anvil import start_anvil
from x402_meter.devstack.deploy import deploy_token, fund_payers, place_canonical_contracts
from x402_meter.devstack.processes import ChildProcess
from x402_meter.facilitator_server import PRIVATE_KEY_ENV

PAYER_FUNDING: Final = 10_000 * 10**6
"""Test USDC minted to each dev payer: 10,000 tokens of 6 decimals."""

_FACILITATOR_READY = re.compile(r"listening on (?P<url>http://\S+)")


@dataclass(frozen=True, slots=True)
class LocalStack:
    """Where the running local stack is, and who is who on it.

    ``payer_private_keys`` are anvil's public, well-known dev keys: local use only.
    """

    rpc_url: str
    facilitator_url: str
    chain_id: int
    network: str
    asset: str
    asset_name: str
    asset_version: str
    asset_decimals: int
    permit2: str
    upto_proxy: str
    pay_to: str
    facilitator_address: str
    payer_private_keys: tuple[str, ...]

    def as_json_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["payer_private_keys"] = list(self.payer_private_keys)
        return data

    def web3(self) -> Web3:
        return Web3(Web3.HTTPProvider(self.rpc_url))


def start_facilitator_process(
    *, rpc_url: str, network: str, private_key: str, log_path: Path | None = None, port: int = 0
) -> ChildProcess:
    """``x402-meter facilitator`` in a child process; the key travels by environment."""
    env = {**os.environ, PRIVATE_KEY_ENV: private_key}
    return ChildProcess(
        [
            sys.executable,
            "-m",
            "x402_meter",
            "facilitator",
            "--rpc-url",
            rpc_url,
            "--network",
            network,
            "--port",
            str(port),
        ],
        name="facilitator",
        env=env,
        log_path=log_path,
    )


def wait_for_facilitator(process: ChildProcess, timeout: float = 60) -> str:
    line = process.wait_for_line(lambda text: _FACILITATOR_READY.search(text) is not None, timeout)
    match = _FACILITATOR_READY.search(line)
    assert match is not None
    return match["url"]


@contextmanager
def local_stack(*, chain_id: int = 31337, log_dir: Path | None = None) -> Iterator[LocalStack]:
    """Start chain, contracts, payers and facilitator; stop every process on exit.

    Logs of anvil and the facilitator go to ``log_dir`` (a temporary directory by default).
    """
    network = f"eip155:{chain_id}"
    with ExitStack() as cleanup:
        if log_dir is None:
            log_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="x402-meter-")))
        anvil = start_anvil(chain_id=chain_id, log_path=log_dir / "anvil.log")
        cleanup.callback(anvil.stop)
        facilitator = start_facilitator_process(
            rpc_url=anvil.rpc_url,
            network=network,
            private_key=FACILITATOR.private_key,
            log_path=log_dir / "facilitator.log",
        )
        cleanup.callback(facilitator.stop)

        w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
        place_canonical_contracts(w3)
        token = deploy_token(w3)
        fund_payers(w3, token, PAYERS, amount=PAYER_FUNDING)
        facilitator_url = wait_for_facilitator(facilitator)

        yield LocalStack(
            rpc_url=anvil.rpc_url,
            facilitator_url=facilitator_url,
            chain_id=chain_id,
            network=network,
            asset=token.address,
            asset_name=token.name,
            asset_version=token.version,
            asset_decimals=token.decimals,
            permit2=PERMIT2_ADDRESS,
            upto_proxy=X402_UPTO_PERMIT2_PROXY_ADDRESS,
            pay_to=SELLER.address,
            facilitator_address=FACILITATOR.address,
            payer_private_keys=tuple(payer.private_key for payer in PAYERS),
        )
