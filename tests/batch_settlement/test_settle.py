"""The settle sweep pays a receiver exactly what was claimed for it and not yet settled,
once, and says so in a Settled event that the SDK's ABI decodes."""

from __future__ import annotations

from web3.logs import DISCARD
from x402.mechanisms.evm.batch_settlement.abi import BATCH_SETTLEMENT_ABI

from tests.batch_settlement.chain import (
    OUTSIDER,
    PAYER,
    RECEIVER,
    RELAYER,
    balance,
    claim,
    escrow,
    open_channel,
)
from x402_meter.devstack.batch_settlement import BatchSettlementContracts


def test_settle_sweeps_exactly_the_claimed_and_unsettled_amount(
    contracts: BatchSettlementContracts,
) -> None:
    first, second = open_channel(contracts, 10_000), open_channel(contracts, 20_000)
    claim(contracts, first, 1_250)
    claim(contracts, second, 4_000)
    receiver_before = balance(contracts, RECEIVER.address)

    receipt = contracts.send(contracts.settle_call(RECEIVER.address), OUTSIDER.address)

    assert balance(contracts, RECEIVER.address) == receiver_before + 5_250
    assert escrow(contracts) == 30_000 - 5_250
    assert contracts.receiver_totals(RECEIVER.address) == (5_250, 5_250)
    sdk_view = contracts.w3.eth.contract(
        address=contracts.settlement.address, abi=BATCH_SETTLEMENT_ABI
    )
    (event,) = sdk_view.events.Settled().process_receipt(receipt, errors=DISCARD)
    assert event["args"] == {
        "receiver": RECEIVER.address,
        "token": contracts.token,
        "sender": OUTSIDER.address,
        "amount": 5_250,
    }
    # The channels keep their accounting: claimed funds left escrow, balances say so.
    assert contracts.channel(first).balance == 10_000
    assert contracts.channel(first).total_claimed == 1_250


def test_a_second_settle_pays_only_what_was_claimed_since(
    contracts: BatchSettlementContracts,
) -> None:
    channel = open_channel(contracts, 10_000)
    claim(contracts, channel, 1_000)
    contracts.send(contracts.settle_call(RECEIVER.address), RELAYER.address)
    receiver_before = balance(contracts, RECEIVER.address)

    nothing = contracts.send(contracts.settle_call(RECEIVER.address), RELAYER.address)
    assert nothing["logs"] == []
    assert balance(contracts, RECEIVER.address) == receiver_before

    claim(contracts, channel, 1_600)
    contracts.send(contracts.settle_call(RECEIVER.address), PAYER.address)
    assert balance(contracts, RECEIVER.address) == receiver_before + 600
    assert contracts.receiver_totals(RECEIVER.address) == (1_600, 1_600)
