"""Who is who on the private batch-settlement chain, and the steps the tests repeat.

The accounts are anvil's public, well-known dev accounts (unlocked on the chain, so they
send transactions without signing here).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError
from web3.types import TxReceipt
from x402.mechanisms.evm.batch_settlement.constants import BATCH_SETTLEMENT_ADDRESS
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

from x402_meter.devstack.accounts import DEPLOYER, FACILITATOR, PAYERS, SELLER, dev_account
from x402_meter.devstack.batch_settlement import BatchSettlementContracts

PAYER = PAYERS[0]
OTHER_PAYER = PAYERS[1]
RECEIVER = SELLER
RECEIVER_AUTHORIZER = dev_account(9)
RELAYER = FACILITATOR
"""Sends what anyone may send (deposits, signed claims and refunds, settle)."""
OUTSIDER = DEPLOYER
"""Has no role in any channel here."""
STRANGER: LocalAccount = Account.from_key(keccak(b"x402-meter tests: a key with no role"))
"""Signs, but is nobody in any channel."""


def balance(contracts: BatchSettlementContracts, owner: str) -> int:
    return contracts.token_balance(owner)


def escrow(contracts: BatchSettlementContracts) -> int:
    """What the settlement contract holds."""
    return balance(contracts, BATCH_SETTLEMENT_ADDRESS)


def new_channel(
    contracts: BatchSettlementContracts, *, payer: str = PAYER.address, **config: Any
) -> ChannelConfig:
    return contracts.channel_config(payer, RECEIVER.address, RECEIVER_AUTHORIZER.address, **config)


def open_channel(contracts: BatchSettlementContracts, deposit: int, **config: Any) -> ChannelConfig:
    """A new channel of ``PAYER`` with ``deposit`` in it (EIP-3009 deposit)."""
    channel = new_channel(contracts, **config)
    contracts.send(contracts.eip3009_deposit_call(channel, PAYER.account, deposit), RELAYER.address)
    return channel


def claim(
    contracts: BatchSettlementContracts,
    channel: ChannelConfig,
    total: int,
    *,
    ceiling: int | None = None,
) -> TxReceipt:
    """The receiver claims ``total`` on ``channel`` with the payer's voucher for ``ceiling``."""
    row = contracts.voucher_claim(
        channel, PAYER.account, total if ceiling is None else ceiling, total
    )
    return contracts.send(contracts.claim_call([row]), RECEIVER.address)


def reverts(reason: str) -> AbstractContextManager[Any]:
    """The call is refused with the contract's revert string ``reason``."""
    return pytest.raises(ContractLogicError, match=f"execution reverted: {reason}")


def chain_time(contracts: BatchSettlementContracts) -> int:
    return int(contracts.w3.eth.get_block("latest")["timestamp"])


def send_in_block_at(
    contracts: BatchSettlementContracts, call: ContractFunction, sender: str, timestamp: int
) -> TxReceipt:
    """Mine ``call`` in a block stamped ``timestamp``, also if it reverts (gas not estimated).

    Time-bound checks need the block's own timestamp, which only a mined transaction sees.
    """
    contracts.w3.provider.make_request("evm_setNextBlockTimestamp", [timestamp])  # type: ignore[arg-type]
    tx_hash = call.transact({"from": sender, "gas": 1_000_000})
    return contracts.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
