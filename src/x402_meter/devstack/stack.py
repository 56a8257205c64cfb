"""The whole local x402 stack: dev chain, contracts, funded payers and a facilitator.

The contracts sit at the x402 SDK's canonical addresses: Permit2, the upto proxy, the
batch-settlement contract and its two deposit collectors. The facilitator holds a dev
receiver-authorizer key (anvil's public dev key, ``accounts.RECEIVER_AUTHORIZER``), so
batch-settlement servers on the local stack need no key of their own.

``local_stack()`` is a context manager; ``x402-meter dev`` and the pytest fixture
``x402_local_stack`` are thin wrappers around it. The facilitator runs in its own process
(the SDK's facilitator does blocking web3 calls), started while the contracts deploy.

The facilitator requires an API key, like a production one: a fresh random one per stack
(``LocalStack.facilitator_api_key``) unless the caller fixes one, so that a restarted
``x402-meter dev`` keeps the exports a developer pasted. Ports are picked by the kernel
unless fixed: every stack (tests start many) gets free ones. It serves any ``payTo``
(``--any-pay-to``): tests and examples create fresh sellers all the time, and the chain is
a throwaway one. A production facilitator lists its payees instead.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from web3 import Web3
from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    PERMIT2_DEPOSIT_COLLECTOR_ADDRESS,
)
from x402.mechanisms.evm.constants import PERMIT2_ADDRESS, X402_UPTO_PERMIT2_PROXY_ADDRESS

from x402_meter.devstack.accounts import FACILITATOR, PAYERS, RECEIVER_AUTHORIZER, SELLER
from x402_meter.devstack.anvil import start_anvil
from x402_meter.devstack.deploy import deploy_token, fund_payers, place_canonical_contracts
from x402_meter.devstack.ports import LOOPBACK, PortInUseError, ensure_port_free
from x402_meter.devstack.processes import ChildProcess
from x402_meter.facilitator_access import API_KEYS_ENV, PAY_TO_ENV
from x402_meter.facilitator_authorizer import RECEIVER_AUTHORIZER_KEY_ENV
from x402_meter.facilitator_server import PRIVATE_KEY_ENV

PAYER_FUNDING: Final = 10_000 * 10**6
"""Test USDC minted to each dev payer: 10,000 tokens of 6 decimals."""

_FACILITATOR_READY = re.compile(r"listening on (?P<url>http://\S+)")


@dataclass(frozen=True, slots=True)
class LocalStack:
    """Where the running local stack is, and who is who on it.

    ``payer_private_keys`` are anvil's public, well-known dev keys: local use only, as is
    ``receiver_authorizer_private_key``, the key with which the facilitator signs
    batch-settlement claims and refunds (``/supported`` advertises ``receiver_authorizer``).
    ``facilitator_api_key`` is the facilitator's credential, random per stack: give it to
    ``X402Meter(facilitator_api_key=...)``.
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
    batch_settlement: str
    erc3009_deposit_collector: str
    permit2_deposit_collector: str
    pay_to: str
    facilitator_address: str
    receiver_authorizer: str
    receiver_authorizer_private_key: str
    payer_private_keys: tuple[str, ...]
    facilitator_api_key: str = field(repr=False)

    def as_json_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["payer_private_keys"] = list(self.payer_private_keys)
        return data

    def facilitator_headers(self) -> dict[str, str]:
        """The header that authenticates a direct call to this stack's facilitator."""
        return {"Authorization": f"Bearer {self.facilitator_api_key}"}

    def web3(self) -> Web3:
        return Web3(Web3.HTTPProvider(self.rpc_url))


def start_facilitator_process(
    *,
    rpc_url: str,
    network: str,
    private_key: str,
    api_keys: Sequence[str] | None,
    pay_to: Sequence[str] | None,
    receiver_authorizer_key: str | None = None,
    log_path: Path | None = None,
    port: int = 0,
) -> ChildProcess:
    """``x402-meter facilitator`` in a child process; the keys travel by environment.

    ``api_keys=None`` runs it with ``--insecure-no-auth``, ``pay_to=None`` with
    ``--any-pay-to``: both must be asked for. ``receiver_authorizer_key=None``: it signs
    no batch-settlement claims or refunds (servers sign their own).
    """
    # Only what we pass: keys or payees in the caller's environment are not this child's.
    inherited = (API_KEYS_ENV, PAY_TO_ENV, RECEIVER_AUTHORIZER_KEY_ENV)
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    env[PRIVATE_KEY_ENV] = private_key
    if receiver_authorizer_key is not None:
        env[RECEIVER_AUTHORIZER_KEY_ENV] = receiver_authorizer_key
    args = [sys.executable, "-m", "x402_meter", "facilitator", "--rpc-url", rpc_url]
    args += ["--network", network, "--port", str(port)]
    if api_keys is None:
        args.append("--insecure-no-auth")
    else:
        env[API_KEYS_ENV] = ",".join(api_keys)
    if pay_to is None:
        args.append("--any-pay-to")
    for address in pay_to or ():
        args += ["--pay-to", address]
    return ChildProcess(args, name="facilitator", env=env, log_path=log_path)


def wait_for_facilitator(process: ChildProcess, timeout: float = 60) -> str:
    line = process.wait_for_line(lambda text: _FACILITATOR_READY.search(text) is not None, timeout)
    match = _FACILITATOR_READY.search(line)
    assert match is not None
    return match["url"]


@contextmanager
def local_stack(
    *,
    chain_id: int = 31337,
    log_dir: Path | None = None,
    rpc_port: int = 0,
    facilitator_port: int = 0,
    facilitator_api_key: str | None = None,
) -> Iterator[LocalStack]:
    """Start chain, contracts, payers and facilitator; stop every process on exit.

    Logs of anvil and the facilitator go to ``log_dir`` (a temporary directory by default).
    A port of 0 is a free one the kernel picks; a fixed port that is taken raises
    ``PortInUseError`` before anything starts. ``facilitator_api_key=None``: a random key.
    """
    network = f"eip155:{chain_id}"
    for port, what in ((rpc_port, "chain RPC"), (facilitator_port, "facilitator")):
        ensure_port_free(LOOPBACK, port, what)
    if rpc_port and rpc_port == facilitator_port:
        raise PortInUseError(f"the chain RPC and the facilitator cannot share port {rpc_port}")
    with ExitStack() as cleanup:
        if log_dir is None:
            log_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="x402-meter-")))
        anvil = start_anvil(
            chain_id=chain_id, host=LOOPBACK, port=rpc_port, log_path=log_dir / "anvil.log"
        )
        cleanup.callback(anvil.stop)
        api_key = facilitator_api_key or secrets.token_urlsafe(32)
        facilitator = start_facilitator_process(
            rpc_url=anvil.rpc_url,
            network=network,
            private_key=FACILITATOR.private_key,
            api_keys=[api_key],
            pay_to=None,  # tests create fresh sellers: see the module docstring
            receiver_authorizer_key=RECEIVER_AUTHORIZER.private_key,
            log_path=log_dir / "facilitator.log",
            port=facilitator_port,
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
            batch_settlement=BATCH_SETTLEMENT_ADDRESS,
            erc3009_deposit_collector=ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
            permit2_deposit_collector=PERMIT2_DEPOSIT_COLLECTOR_ADDRESS,
            pay_to=SELLER.address,
            facilitator_address=FACILITATOR.address,
            receiver_authorizer=RECEIVER_AUTHORIZER.address,
            receiver_authorizer_private_key=RECEIVER_AUTHORIZER.private_key,
            payer_private_keys=tuple(payer.private_key for payer in PAYERS),
            facilitator_api_key=api_key,
        )
