"""What the paying client believes it spent: only what the chain proves, never a receipt.

A seller's receipt is the seller's word. An ``upto`` authorization lets whoever holds it move
up to its maximum, so the wallet counts it at that maximum until a settlement transaction
read from the chain (the client's own RPC URL) proves a lower amount. A transaction proves a
payment only if it succeeded on the wallet's chain, is a top-level call of the x402 ``upto``
proxy's ``settle`` or ``settleWithPermit`` with THIS authorization's Permit2 nonce, owner and
token, and then the amount is what the token's ``Transfer`` logs of that transaction moved
from the payer. Permit2 consumes a nonce once, so one transaction proves one authorization.

An authorization whose deadline has passed on chain while its Permit2 nonce is still unused
can never be settled any more: it is released (it cost nothing).

Everything here is blocking web3: the async client calls it in a worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from eth_typing import ChecksumAddress
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import TransactionNotFound
from x402.mechanisms.evm.batch_settlement.abi import BATCH_SETTLEMENT_ABI
from x402.mechanisms.evm.batch_settlement.constants import BATCH_SETTLEMENT_ADDRESS
from x402.mechanisms.evm.constants import (
    PERMIT2_ADDRESS,
    X402_UPTO_PERMIT2_PROXY_ABI,
    X402_UPTO_PERMIT2_PROXY_ADDRESS,
    X402_UPTO_PERMIT2_PROXY_SETTLE_WITH_PERMIT_ABI,
)

from x402_meter.errors import ConfigurationError

__all__ = ["ChainProver", "Permit2Authorization"]

TRANSFER_TOPIC: Final = HexBytes(Web3.keccak(text="Transfer(address,address,uint256)"))
_NONCE_BITMAP_ABI: Final = [
    {
        "type": "function",
        "name": "nonceBitmap",
        "inputs": [{"name": "owner", "type": "address"}, {"name": "wordPos", "type": "uint256"}],
        "outputs": [{"name": "", "type": "uint256"}],
        "stateMutability": "view",
    }
]
_SETTLE_FUNCTIONS: Final = frozenset({"settle", "settleWithPermit"})


@dataclass(frozen=True, slots=True)
class Permit2Authorization:
    """The parts of a signed ``upto`` Permit2 authorization that a settlement must consume."""

    owner: ChecksumAddress
    token: ChecksumAddress
    nonce: int
    deadline: int
    """Unix seconds; Permit2 refuses it in any block with a later timestamp."""

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Permit2Authorization | None:
        """Read it from the payload the SDK signed; None if it is not an ``upto`` Permit2 one."""
        authorization = payload.get("permit2Authorization")
        if not isinstance(authorization, Mapping):
            return None
        permitted = authorization.get("permitted")
        if not isinstance(permitted, Mapping):
            return None
        try:
            return cls(
                owner=Web3.to_checksum_address(authorization["from"]),
                token=Web3.to_checksum_address(permitted["token"]),
                nonce=_uint(authorization["nonce"]),
                deadline=_uint(authorization["deadline"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _uint(value: Any) -> int:
    """A decimal string, as the SDK writes nonces and deadlines (not a bool, float, ...)."""
    if not (isinstance(value, str) and value.isascii() and value.isdigit()):
        raise ValueError(f"not a decimal string: {value!r}")
    return int(value)


class ChainProver:
    """Reads settlements of one wallet's ``upto`` authorizations from its own RPC URL.

    Args:
        rpc_url: a JSON-RPC endpoint of the chain the wallet pays on (one the payer trusts,
            not the seller's).
        chain_id: the chain it must serve (checked once, on first use).
        asset: the token the wallet pays with.
    """

    def __init__(self, rpc_url: str, *, chain_id: int, asset: str) -> None:
        if not isinstance(rpc_url, str) or not rpc_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"rpc_url must be an http(s) URL, got {rpc_url!r}")
        self.rpc_url = rpc_url
        self.chain_id = chain_id
        self._w3 = Web3(Web3.HTTPProvider(rpc_url))
        self._asset = Web3.to_checksum_address(asset)
        self._proxy = self._w3.eth.contract(
            address=Web3.to_checksum_address(X402_UPTO_PERMIT2_PROXY_ADDRESS),
            abi=[*X402_UPTO_PERMIT2_PROXY_ABI, *X402_UPTO_PERMIT2_PROXY_SETTLE_WITH_PERMIT_ABI],
        )
        self._permit2 = self._w3.eth.contract(
            address=Web3.to_checksum_address(PERMIT2_ADDRESS), abi=_NONCE_BITMAP_ABI
        )
        self._settlement = self._w3.eth.contract(
            address=Web3.to_checksum_address(BATCH_SETTLEMENT_ADDRESS), abi=BATCH_SETTLEMENT_ABI
        )
        self._chain_lock = threading.Lock()
        self._chain_checked = False

    def settled_amount(self, authorization: Permit2Authorization, transaction: str) -> int | None:
        """Atomic units ``transaction`` moved from the payer if it settled ``authorization``;
        None if it does not prove that (not mined, reverted, another authorization or
        contract). Raises ``ConfigurationError`` if the RPC URL serves another chain, and
        web3's or the transport's errors if the chain cannot be read."""
        self._check_chain()
        try:
            tx = self._w3.eth.get_transaction(HexBytes(transaction))
            receipt = self._w3.eth.get_transaction_receipt(HexBytes(transaction))
        except (TransactionNotFound, ValueError):
            return None
        if receipt["status"] != 1 or tx.get("to") != self._proxy.address:
            return None
        if "chainId" in tx and int(tx["chainId"]) != self.chain_id:
            return None
        if not self._consumes(tx["input"], authorization):
            return None
        return self._moved_from(receipt["logs"], authorization.owner)

    def expired_unused(self, authorization: Permit2Authorization) -> bool:
        """Whether the chain's latest block is past the deadline while the Permit2 nonce is
        still unused, both read at that same block: then no later block can settle it."""
        self._check_chain()
        block = self._w3.eth.get_block("latest")
        if int(block["timestamp"]) <= authorization.deadline:
            return False
        word, bit = divmod(authorization.nonce, 256)
        bitmap: int = self._permit2.functions.nonceBitmap(authorization.owner, word).call(
            block_identifier=block["number"]
        )
        return not (bitmap >> bit) & 1

    def channel(self, channel_id: str) -> tuple[int, int]:
        """A session channel's ``(balance, totalClaimed)`` in the escrow (a channel never
        deposited into reads as zeros). Raises web3's errors if the chain cannot be read."""
        self._check_chain()
        found = self._settlement.functions.channels(HexBytes(channel_id)).call()
        return int(found[0]), int(found[1])

    def _check_chain(self) -> None:
        with self._chain_lock:
            if self._chain_checked:
                return
            served = self._w3.eth.chain_id
            if served != self.chain_id:
                raise ConfigurationError(
                    f"rpc_url {self.rpc_url} serves chain {served},"
                    f" the wallet pays on eip155:{self.chain_id}"
                )
            self._chain_checked = True

    def _consumes(self, calldata: Any, authorization: Permit2Authorization) -> bool:
        """The call is the proxy's settle of this nonce, owner and token."""
        try:
            function, arguments = self._proxy.decode_function_input(HexBytes(calldata))
        except ValueError:
            return False
        if function.fn_name not in _SETTLE_FUNCTIONS:
            return False
        permit = arguments["permit"]
        return (
            int(permit["nonce"]) == authorization.nonce
            and Web3.to_checksum_address(arguments["owner"]) == authorization.owner
            and Web3.to_checksum_address(permit["permitted"]["token"]) == authorization.token
            and authorization.token == self._asset
        )

    def _moved_from(self, logs: Any, owner: ChecksumAddress) -> int:
        """The asset's ``Transfer`` amounts out of ``owner`` in these logs."""
        sender = HexBytes(owner).rjust(32, b"\0")
        moved = 0
        for log in logs:
            topics = [HexBytes(topic) for topic in log["topics"]]
            if (
                log["address"] == self._asset
                and len(topics) == 3
                and topics[0] == TRANSFER_TOPIC
                and topics[1] == sender
            ):
                moved += int.from_bytes(HexBytes(log["data"]), "big")
        return moved
