"""Anvil's well-known development accounts and the role each plays in the local stack.

Every key below is PUBLIC: anvil, Hardhat and Foundry derive them from the published
mnemonic ``test test test test test test test test test test test junk``. They hold value
only on a local dev chain. Never send real funds to them or use them on a real network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from eth_account import Account
from eth_account.signers.local import LocalAccount

DEV_MNEMONIC: Final = "test test test test test test test test test test test junk"
"""Anvil's public development mnemonic (a well-known dev secret, not a secret)."""

# Anvil's well-known dev private keys, index = HD path m/44'/60'/0'/0/{index}.
# tests/test_dev_accounts.py re-derives them from DEV_MNEMONIC so a typo cannot hide here.
ANVIL_DEV_PRIVATE_KEYS: Final[tuple[str, ...]] = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)


@dataclass(frozen=True, slots=True)
class DevAccount:
    """One anvil dev account: a public, well-known key for local use only."""

    index: int
    private_key: str
    address: str
    """Derived once: deriving a public key in pure Python costs milliseconds."""

    @property
    def account(self) -> LocalAccount:
        account: LocalAccount = Account.from_key(self.private_key)
        return account


def dev_account(index: int) -> DevAccount:
    """Return anvil's well-known dev account ``index`` (0-9)."""
    key = ANVIL_DEV_PRIVATE_KEYS[index]
    return DevAccount(index, key, str(Account.from_key(key).address))


# Roles in the local stack. Separate accounts keep balances easy to reason about in tests:
# the seller's balance moves only by what payers settle.
DEPLOYER: Final = dev_account(0)
"""Deploys the test token and mints it (the token's minter)."""
FACILITATOR: Final = dev_account(1)
"""Signs and pays gas for settlements in the local facilitator."""
SELLER: Final = dev_account(2)
"""The default ``pay_to``: the seller who receives payments."""
PAYERS: Final[tuple[DevAccount, ...]] = tuple(dev_account(i) for i in range(3, 9))
"""Funded payers: test USDC and a Permit2 approval each."""
RECEIVER_AUTHORIZER: Final = dev_account(9)
"""The local facilitator's batch-settlement receiver authorizer: it signs claims and refunds
(EIP-712 typed data) and never sends a transaction, so its ETH and nonce stay untouched."""
