"""Timed withdrawals: the payer's way out without the receiver, only after the channel's
withdraw delay, and only of what is still unclaimed when it completes."""

from __future__ import annotations

import pytest

from tests.batch_settlement.chain import (
    OTHER_PAYER,
    OUTSIDER,
    PAYER,
    RECEIVER,
    RECEIVER_AUTHORIZER,
    RELAYER,
    balance,
    chain_time,
    claim,
    escrow,
    open_channel,
    reverts,
    send_in_block_at,
)
from x402_meter.devstack.accounts import DevAccount
from x402_meter.devstack.batch_settlement import BatchSettlementContracts

DELAY = 3_600


def test_a_withdrawal_completes_at_its_delay_and_not_a_second_earlier(
    contracts: BatchSettlementContracts,
) -> None:
    channel = open_channel(contracts, 10_000, withdraw_delay=DELAY)
    contracts.send(contracts.initiate_withdraw_call(channel, 6_000), PAYER.address)
    amount, initiated_at = contracts.pending_withdrawal(channel)
    assert (amount, initiated_at) == (6_000, chain_time(contracts))
    payer_before = balance(contracts, PAYER.address)

    early = send_in_block_at(
        contracts,
        contracts.finalize_withdraw_call(channel),
        PAYER.address,
        initiated_at + DELAY - 1,
    )
    assert early["status"] == 0
    assert balance(contracts, PAYER.address) == payer_before
    assert contracts.channel(channel).balance == 10_000

    on_time = send_in_block_at(
        contracts, contracts.finalize_withdraw_call(channel), PAYER.address, initiated_at + DELAY
    )
    assert on_time["status"] == 1
    assert balance(contracts, PAYER.address) == payer_before + 6_000
    assert contracts.channel(channel).balance == 4_000
    assert escrow(contracts) == 4_000
    assert contracts.pending_withdrawal(channel) == (0, 0)


def test_finalizing_early_is_refused_with_its_reason(contracts: BatchSettlementContracts) -> None:
    channel = open_channel(contracts, 10_000, withdraw_delay=DELAY)
    contracts.send(contracts.initiate_withdraw_call(channel, 6_000), PAYER.address)

    with reverts("WithdrawDelayNotElapsed"):
        contracts.send(contracts.finalize_withdraw_call(channel), PAYER.address)


def test_claims_made_during_the_delay_come_first(contracts: BatchSettlementContracts) -> None:
    channel = open_channel(contracts, 10_000, withdraw_delay=DELAY)
    claim(contracts, channel, 1_000)
    contracts.send(contracts.initiate_withdraw_call(channel, 9_000), PAYER.address)
    _, initiated_at = contracts.pending_withdrawal(channel)
    claim(contracts, channel, 3_500)  # the receiver hurries its vouchers in
    payer_before = balance(contracts, PAYER.address)

    receipt = send_in_block_at(
        contracts, contracts.finalize_withdraw_call(channel), PAYER.address, initiated_at + DELAY
    )

    assert receipt["status"] == 1
    assert balance(contracts, PAYER.address) == payer_before + 6_500
    assert contracts.channel(channel).balance == 3_500
    assert contracts.channel(channel).total_claimed == 3_500
    assert escrow(contracts) == 3_500


def test_a_withdrawal_cannot_ask_for_claimed_funds(contracts: BatchSettlementContracts) -> None:
    channel = open_channel(contracts, 10_000)
    claim(contracts, channel, 4_000)

    with reverts("WithdrawAmountExceedsAvailable"):
        contracts.send(contracts.initiate_withdraw_call(channel, 6_001), PAYER.address)
    contracts.send(contracts.initiate_withdraw_call(channel, 6_000), PAYER.address)
    assert contracts.pending_withdrawal(channel)[0] == 6_000


def test_one_withdrawal_at_a_time(contracts: BatchSettlementContracts) -> None:
    channel = open_channel(contracts, 10_000)
    contracts.send(contracts.initiate_withdraw_call(channel, 1_000), PAYER.address)

    with reverts("WithdrawalAlreadyPending"):
        contracts.send(contracts.initiate_withdraw_call(channel, 1_000), PAYER.address)


def test_nothing_to_finalize_without_a_pending_withdrawal(
    contracts: BatchSettlementContracts,
) -> None:
    channel = open_channel(contracts, 10_000)

    with reverts("WithdrawalNotPending"):
        contracts.send(contracts.finalize_withdraw_call(channel), PAYER.address)
    with reverts("NothingToWithdraw"):
        contracts.send(contracts.initiate_withdraw_call(channel, 0), PAYER.address)


@pytest.mark.parametrize(
    "sender",
    [RECEIVER, RECEIVER_AUTHORIZER, RELAYER, OUTSIDER],
    ids=["receiver", "receiver-authorizer", "relayer", "outsider"],
)
def test_only_the_payer_side_withdraws(
    contracts: BatchSettlementContracts, sender: DevAccount
) -> None:
    channel = open_channel(contracts, 10_000, withdraw_delay=DELAY)

    with reverts("InvalidChannel"):
        contracts.send(contracts.initiate_withdraw_call(channel, 1_000), sender.address)
    contracts.send(contracts.initiate_withdraw_call(channel, 1_000), PAYER.address)
    with reverts("NotAuthorizedToFinalizeWithdraw"):
        contracts.send(contracts.finalize_withdraw_call(channel), sender.address)


def test_the_payers_voucher_key_may_withdraw_for_it_and_the_payer_gets_the_funds(
    contracts: BatchSettlementContracts,
) -> None:
    channel = open_channel(
        contracts, 10_000, withdraw_delay=DELAY, payer_authorizer=OTHER_PAYER.address
    )
    contracts.send(contracts.initiate_withdraw_call(channel, 2_000), OTHER_PAYER.address)
    _, initiated_at = contracts.pending_withdrawal(channel)
    payer_before, key_before = (
        balance(contracts, PAYER.address),
        balance(contracts, OTHER_PAYER.address),
    )

    receipt = send_in_block_at(
        contracts,
        contracts.finalize_withdraw_call(channel),
        OTHER_PAYER.address,
        initiated_at + DELAY,
    )

    assert receipt["status"] == 1
    assert balance(contracts, PAYER.address) == payer_before + 2_000
    assert balance(contracts, OTHER_PAYER.address) == key_before


def test_a_refund_shrinks_a_pending_withdrawal_and_cancels_one_it_covers(
    contracts: BatchSettlementContracts,
) -> None:
    channel = open_channel(contracts, 10_000)
    contracts.send(contracts.initiate_withdraw_call(channel, 5_000), PAYER.address)
    _, initiated_at = contracts.pending_withdrawal(channel)

    contracts.send(contracts.refund_call(channel, 2_000), RECEIVER.address)
    assert contracts.pending_withdrawal(channel) == (3_000, initiated_at)

    contracts.send(contracts.refund_call(channel, 3_000), RECEIVER.address)
    assert contracts.pending_withdrawal(channel) == (0, 0)
    assert contracts.channel(channel).balance == 5_000
