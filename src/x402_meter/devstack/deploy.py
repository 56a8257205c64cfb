"""Put the x402 contracts on a fresh dev chain and fund the dev payers.

Permit2, the upto proxy, Multicall3 and the batch-settlement contract with its two deposit
collectors go to their canonical mainnet addresses with ``anvil_setCode``, so the x402
SDK's constants work against the local chain unchanged. ``anvil_setCode`` installs runtime
code without running a constructor: none of these contracts has one (addresses they call
are compile-time constants, EIP-712 domain separators are computed per call).
The token is deployed by an ordinary transaction (its constructor sets name and version).
All accounts used here are anvil's unlocked, well-known dev accounts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from web3 import Web3
from web3.types import TxParams
from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    PERMIT2_DEPOSIT_COLLECTOR_ADDRESS,
)
from x402.mechanisms.evm.constants import (
    MULTICALL3_ADDRESS,
    PERMIT2_ADDRESS,
    X402_UPTO_PERMIT2_PROXY_ADDRESS,
)

from x402_meter.devstack.accounts import DEPLOYER, DevAccount
from x402_meter.devstack.contracts_artifacts import load_artifact
from x402_meter.errors import DeploymentError as DeploymentError

MAX_UINT256: Final = 2**256 - 1


@dataclass(frozen=True, slots=True)
class DevToken:
    """The USDC-like test token as deployed."""

    address: str
    name: str
    symbol: str
    version: str
    decimals: int


CANONICAL_CONTRACTS: Final[tuple[tuple[str, str], ...]] = (
    ("Permit2", PERMIT2_ADDRESS),
    ("UptoProxy", X402_UPTO_PERMIT2_PROXY_ADDRESS),
    ("Multicall3", MULTICALL3_ADDRESS),
    ("BatchSettlement", BATCH_SETTLEMENT_ADDRESS),
    ("ERC3009DepositCollector", ERC3009_DEPOSIT_COLLECTOR_ADDRESS),
    ("Permit2DepositCollector", PERMIT2_DEPOSIT_COLLECTOR_ADDRESS),
)
"""(artifact name, address) of every contract placed at the address the x402 SDK expects."""


def place_canonical_contracts(w3: Web3) -> None:
    """Install every contract of ``CANONICAL_CONTRACTS`` at its canonical address."""
    for name, address in CANONICAL_CONTRACTS:
        w3.provider.make_request(
            "anvil_setCode",  # type: ignore[arg-type]
            [address, load_artifact(name)["bytecode_runtime"]],
        )


def _send(w3: Web3, tx: TxParams) -> Any:
    tx_hash = w3.eth.send_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    if receipt["status"] != 1:
        raise DeploymentError(f"transaction {tx_hash.hex()} reverted: {tx}")
    return receipt


def deploy_token(
    w3: Web3,
    *,
    name: str = "USD Coin",
    symbol: str = "USDC",
    version: str = "2",
    decimals: int = 6,
    deployer: DevAccount = DEPLOYER,
) -> DevToken:
    """Deploy the test token; ``deployer`` becomes its minter."""
    artifact = load_artifact("Token")
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    tx = factory.constructor(name, symbol, version, decimals).build_transaction(
        {"from": deployer.address}
    )
    receipt = _send(w3, tx)
    return DevToken(str(receipt["contractAddress"]), name, symbol, version, decimals)


def fund_payers(
    w3: Web3,
    token: DevToken,
    payers: Sequence[DevAccount],
    *,
    amount: int,
    approve_permit2: bool = True,
    minter: DevAccount = DEPLOYER,
) -> None:
    """Mint ``amount`` to each payer and, by default, approve Permit2 for it (once, max)."""
    contract = w3.eth.contract(
        address=Web3.to_checksum_address(token.address), abi=load_artifact("Token")["abi"]
    )
    for payer in payers:
        _send(
            w3,
            contract.functions.mint(payer.address, amount).build_transaction(
                {"from": minter.address}
            ),
        )
        if approve_permit2:
            _send(
                w3,
                contract.functions.approve(PERMIT2_ADDRESS, MAX_UINT256).build_transaction(
                    {"from": payer.address}
                ),
            )


def token_balance(w3: Web3, token_address: str, owner: str) -> int:
    """``balanceOf(owner)`` in atomic units."""
    contract = w3.eth.contract(
        address=Web3.to_checksum_address(token_address), abi=load_artifact("Token")["abi"]
    )
    return int(contract.functions.balanceOf(Web3.to_checksum_address(owner)).call())
