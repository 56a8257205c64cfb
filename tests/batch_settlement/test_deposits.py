"""Deposits through both collectors, authorized the way the SDK client authorizes them.

The payer signs with the SDK's own deposit-payload functions (EIP-3009
``ReceiveWithAuthorization`` to the collector, or a Permit2 witness transfer naming the
channel); the collector data is built with the SDK facilitator's own encoders. Balances are
read from the chain, to the atomic unit.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from web3.contract.contract import ContractFunction
from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    PERMIT2_DEPOSIT_COLLECTOR_ADDRESS,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

from x402_meter.devstack import token_balance
from x402_meter.devstack.accounts import FACILITATOR, PAYERS, SELLER, dev_account
from x402_meter.devstack.batch_settlement import BatchSettlementContracts

PAYER = PAYERS[0]
RECEIVER_AUTHORIZER = dev_account(9)

DepositCall = Callable[[BatchSettlementContracts, ChannelConfig, int], ContractFunction]


def by_eip3009(
    contracts: BatchSettlementContracts, config: ChannelConfig, amount: int
) -> ContractFunction:
    return contracts.eip3009_deposit_call(config, PAYER.account, amount)


def by_permit2(
    contracts: BatchSettlementContracts, config: ChannelConfig, amount: int
) -> ContractFunction:
    return contracts.permit2_deposit_call(config, PAYER.account, amount)


@pytest.mark.parametrize("deposit", [by_eip3009, by_permit2], ids=["eip3009", "permit2"])
def test_a_deposit_moves_exactly_its_amount_into_the_channel(
    contracts: BatchSettlementContracts, deposit: DepositCall
) -> None:
    config = contracts.channel_config(PAYER.address, SELLER.address, RECEIVER_AUTHORIZER.address)
    payer_before = token_balance(contracts.w3, contracts.token, PAYER.address)

    contracts.send(deposit(contracts, config, 1_234_567), FACILITATOR.address)

    assert token_balance(contracts.w3, contracts.token, PAYER.address) == payer_before - 1_234_567
    assert token_balance(contracts.w3, contracts.token, BATCH_SETTLEMENT_ADDRESS) == 1_234_567
    assert contracts.channel(config).balance == 1_234_567
    assert contracts.channel(config).total_claimed == 0
    for collector in (ERC3009_DEPOSIT_COLLECTOR_ADDRESS, PERMIT2_DEPOSIT_COLLECTOR_ADDRESS):
        assert token_balance(contracts.w3, contracts.token, collector) == 0
