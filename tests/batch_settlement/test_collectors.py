"""Deposits: a deposit credits exactly what reached the contract, a payer's authorization
funds only the channel it names, and only the settlement contract can drive a collector."""

from __future__ import annotations

from typing import Any

import pytest
import vyper
from eth_abi.abi import encode
from web3 import Web3
from web3.contract import Contract
from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    PERMIT2_DEPOSIT_COLLECTOR_ADDRESS,
)
from x402.mechanisms.evm.batch_settlement.facilitator.utils import to_contract_channel_config

from tests.batch_settlement.chain import (
    OUTSIDER,
    PAYER,
    RECEIVER,
    RELAYER,
    balance,
    escrow,
    new_channel,
    reverts,
)
from x402_meter.devstack.accounts import DEPLOYER, DevAccount
from x402_meter.devstack.batch_settlement import BatchSettlementContracts
from x402_meter.devstack.contracts_artifacts import load_artifact

ZERO_ADDRESS = "0x" + "00" * 20

# A collector that hands over whatever amount its data names, out of its own pocket.
GENEROUS_COLLECTOR = """
#pragma version ~=0.4.3
interface IERC20:
    def transfer(receiver: address, amount: uint256) -> bool: nonpayable

@external
def collect(payer: address, token: address, amount: uint256, channelId: bytes32, data: Bytes[2048]):
    delivered: uint256 = abi_decode(data, uint256)
    extcall IERC20(token).transfer(msg.sender, delivered)
"""


def deploy_generous_collector(contracts: BatchSettlementContracts) -> str:
    compiled: dict[str, Any] = vyper.compile_code(
        GENEROUS_COLLECTOR, output_formats=["abi", "bytecode"]
    )
    factory = contracts.w3.eth.contract(abi=compiled["abi"], bytecode=compiled["bytecode"])
    receipt = contracts.w3.eth.wait_for_transaction_receipt(
        factory.constructor().transact({"from": OUTSIDER.address})
    )
    address = str(receipt["contractAddress"])
    token = contracts.w3.eth.contract(
        address=Web3.to_checksum_address(contracts.token), abi=load_artifact("Token")["abi"]
    )
    token.functions.mint(address, 1_000_000).transact({"from": DEPLOYER.address})
    return address


@pytest.mark.parametrize("delivered", [999, 1_001])
def test_a_deposit_must_deliver_exactly_its_amount(
    contracts: BatchSettlementContracts, delivered: int
) -> None:
    collector = deploy_generous_collector(contracts)
    channel = new_channel(contracts)
    config = to_contract_channel_config(channel)
    deposit = contracts.settlement.functions.deposit

    with reverts("DepositCollectionFailed"):
        contracts.send(
            deposit(config, 1_000, collector, encode(["uint256"], [delivered])), RELAYER.address
        )
    assert contracts.channel(channel).balance == 0

    contracts.send(deposit(config, 1_000, collector, encode(["uint256"], [1_000])), RELAYER.address)
    assert contracts.channel(channel).balance == 1_000
    assert escrow(contracts) == 1_000


def test_an_eip3009_authorization_funds_only_its_own_channel(
    contracts: BatchSettlementContracts,
) -> None:
    signed_for, other = new_channel(contracts), new_channel(contracts)
    data = contracts.eip3009_deposit_call(signed_for, PAYER.account, 1_000).args[3]
    payer_before = balance(contracts, PAYER.address)

    with reverts("EIP3009: invalid signature"):
        contracts.send(
            contracts.settlement.functions.deposit(
                to_contract_channel_config(other), 1_000, ERC3009_DEPOSIT_COLLECTOR_ADDRESS, data
            ),
            RELAYER.address,
        )
    assert balance(contracts, PAYER.address) == payer_before


def test_a_permit2_authorization_funds_only_its_own_channel(
    contracts: BatchSettlementContracts,
) -> None:
    signed_for, other = new_channel(contracts), new_channel(contracts)
    data = contracts.permit2_deposit_call(signed_for, PAYER.account, 1_000).args[3]
    payer_before = balance(contracts, PAYER.address)

    with reverts("InvalidSigner"):
        contracts.send(
            contracts.settlement.functions.deposit(
                to_contract_channel_config(other), 1_000, PERMIT2_DEPOSIT_COLLECTOR_ADDRESS, data
            ),
            RELAYER.address,
        )
    assert balance(contracts, PAYER.address) == payer_before


def collector_contract(contracts: BatchSettlementContracts, name: str, address: str) -> Contract:
    return contracts.w3.eth.contract(
        address=Web3.to_checksum_address(address), abi=load_artifact(name)["abi"]
    )


@pytest.mark.parametrize("sender", [OUTSIDER, PAYER], ids=["outsider", "payer"])
def test_only_the_settlement_contract_drives_a_collector(
    contracts: BatchSettlementContracts, sender: DevAccount
) -> None:
    channel = new_channel(contracts)
    channel_id = bytes.fromhex(contracts.channel_id(channel).removeprefix("0x"))
    payer_before = balance(contracts, PAYER.address)
    for name, address, call in (
        (
            "ERC3009DepositCollector",
            ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
            contracts.eip3009_deposit_call(channel, PAYER.account, 1_000),
        ),
        (
            "Permit2DepositCollector",
            PERMIT2_DEPOSIT_COLLECTOR_ADDRESS,
            contracts.permit2_deposit_call(channel, PAYER.account, 1_000),
        ),
    ):
        collect = collector_contract(contracts, name, address).functions.collect
        with reverts("OnlyX402BatchSettlement"):
            contracts.send(
                collect(PAYER.address, contracts.token, 1_000, channel_id, call.args[3]),
                sender.address,
            )
        assert collector_contract(
            contracts, name, address
        ).functions.x402BatchSettlement().call() == (BATCH_SETTLEMENT_ADDRESS)
    assert balance(contracts, PAYER.address) == payer_before


@pytest.mark.parametrize("withdraw_delay", [899, 2_592_001])
def test_a_channel_withdraw_delay_is_15_minutes_to_30_days(
    contracts: BatchSettlementContracts, withdraw_delay: int
) -> None:
    channel = new_channel(contracts, withdraw_delay=withdraw_delay)

    with reverts("WithdrawDelayOutOfRange"):
        contracts.send(
            contracts.eip3009_deposit_call(channel, PAYER.account, 1_000), RELAYER.address
        )


def test_a_channel_needs_a_receiver_authorizer(contracts: BatchSettlementContracts) -> None:
    channel = contracts.channel_config(PAYER.address, RECEIVER.address, ZERO_ADDRESS)

    with reverts("InvalidChannel"):
        contracts.send(
            contracts.eip3009_deposit_call(channel, PAYER.account, 1_000), RELAYER.address
        )


def test_a_deposit_needs_an_amount_and_a_collector(contracts: BatchSettlementContracts) -> None:
    channel = new_channel(contracts)
    with reverts("ZeroDeposit"):
        contracts.send(contracts.eip3009_deposit_call(channel, PAYER.account, 0), RELAYER.address)

    data = contracts.eip3009_deposit_call(channel, PAYER.account, 1_000).args[3]
    deposit = contracts.settlement.functions.deposit
    with reverts("InvalidCollector"):
        contracts.send(
            deposit(to_contract_channel_config(channel), 1_000, ZERO_ADDRESS, data), RELAYER.address
        )
