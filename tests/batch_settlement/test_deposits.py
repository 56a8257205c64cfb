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
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    PERMIT2_DEPOSIT_COLLECTOR_ADDRESS,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

from tests.batch_settlement.chain import PAYER, RELAYER, balance, escrow, new_channel
from x402_meter.devstack.batch_settlement import BatchSettlementContracts

DepositCall = Callable[[BatchSettlementContracts, ChannelConfig, int], ContractFunction]


def by_eip3009(
    contracts: BatchSettlementContracts, channel: ChannelConfig, amount: int
) -> ContractFunction:
    return contracts.eip3009_deposit_call(channel, PAYER.account, amount)


def by_permit2(
    contracts: BatchSettlementContracts, channel: ChannelConfig, amount: int
) -> ContractFunction:
    return contracts.permit2_deposit_call(channel, PAYER.account, amount)


@pytest.mark.parametrize("deposit", [by_eip3009, by_permit2], ids=["eip3009", "permit2"])
def test_a_deposit_moves_exactly_its_amount_into_the_channel(
    contracts: BatchSettlementContracts, deposit: DepositCall
) -> None:
    channel = new_channel(contracts)
    payer_before = balance(contracts, PAYER.address)

    contracts.send(deposit(contracts, channel, 1_234_567), RELAYER.address)

    assert balance(contracts, PAYER.address) == payer_before - 1_234_567
    assert escrow(contracts) == 1_234_567
    assert contracts.channel(channel).balance == 1_234_567
    assert contracts.channel(channel).total_claimed == 0
    for collector in (ERC3009_DEPOSIT_COLLECTOR_ADDRESS, PERMIT2_DEPOSIT_COLLECTOR_ADDRESS):
        assert balance(contracts, collector) == 0


@pytest.mark.parametrize("deposit", [by_eip3009, by_permit2], ids=["eip3009", "permit2"])
def test_a_top_up_adds_to_the_channel_balance(
    contracts: BatchSettlementContracts, deposit: DepositCall
) -> None:
    channel = new_channel(contracts)
    contracts.send(deposit(contracts, channel, 1_000), RELAYER.address)
    contracts.send(deposit(contracts, channel, 2_345), RELAYER.address)

    assert contracts.channel(channel).balance == 3_345
    assert escrow(contracts) == 3_345
