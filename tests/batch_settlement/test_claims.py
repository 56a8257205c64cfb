"""Claims: recorded totals only grow, never past the channel's balance nor the voucher's
signed ceiling, and only the receiver side records them (directly, or by a ClaimBatch
signature of the receiver authorizer that anyone may relay)."""

from __future__ import annotations

import pytest
from eth_account import Account

from tests.batch_settlement.chain import (
    OTHER_PAYER,
    OUTSIDER,
    PAYER,
    RECEIVER,
    RECEIVER_AUTHORIZER,
    RELAYER,
    STRANGER,
    balance,
    claim,
    escrow,
    new_channel,
    open_channel,
    reverts,
)
from x402_meter.devstack.accounts import DevAccount
from x402_meter.devstack.batch_settlement import BatchSettlementContracts

ZERO_ADDRESS = "0x" + "00" * 20


def test_a_claim_records_its_total_and_moves_no_tokens(
    contracts: BatchSettlementContracts,
) -> None:
    channel = open_channel(contracts, 10_000)
    payer_before, receiver_before = (
        balance(contracts, PAYER.address),
        balance(contracts, RECEIVER.address),
    )

    claim(contracts, channel, 2_500, ceiling=3_000)

    assert contracts.channel(channel).total_claimed == 2_500
    assert contracts.channel(channel).balance == 10_000
    assert contracts.receiver_totals(RECEIVER.address) == (2_500, 0)
    assert balance(contracts, PAYER.address) == payer_before
    assert balance(contracts, RECEIVER.address) == receiver_before
    assert escrow(contracts) == 10_000


def test_the_claimed_total_never_goes_down(contracts: BatchSettlementContracts) -> None:
    channel = open_channel(contracts, 10_000)
    claim(contracts, channel, 4_000)

    receipt = claim(contracts, channel, 3_000)  # an older, smaller voucher

    assert contracts.channel(channel).total_claimed == 4_000
    assert contracts.receiver_totals(RECEIVER.address) == (4_000, 0)
    assert receipt["logs"] == []  # applied already: nothing happened
    claim(contracts, channel, 4_001)
    assert contracts.channel(channel).total_claimed == 4_001


def test_a_claim_cannot_pass_the_vouchers_signed_ceiling(
    contracts: BatchSettlementContracts,
) -> None:
    channel = open_channel(contracts, 10_000)
    row = contracts.voucher_claim(channel, PAYER.account, 3_000, 3_001)

    with reverts("ClaimExceedsCeiling"):
        contracts.send(contracts.claim_call([row]), RECEIVER.address)

    # Nor by raising the ceiling the payer signed.
    row = contracts.voucher_claim(channel, PAYER.account, 3_000, 5_000)
    row.max_claimable_amount = "5000"
    with reverts("InvalidSignature"):
        contracts.send(contracts.claim_call([row]), RECEIVER.address)
    assert contracts.channel(channel).total_claimed == 0


def test_a_claim_cannot_pass_the_channel_balance(contracts: BatchSettlementContracts) -> None:
    channel = open_channel(contracts, 10_000)

    with reverts("ClaimExceedsBalance"):
        claim(contracts, channel, 10_001)

    claim(contracts, channel, 10_000)
    assert contracts.channel(channel).total_claimed == 10_000


@pytest.mark.parametrize("voucher_signer", [OTHER_PAYER, RECEIVER_AUTHORIZER])
def test_only_the_payer_authorizer_signs_vouchers(
    contracts: BatchSettlementContracts, voucher_signer: DevAccount
) -> None:
    channel = open_channel(contracts, 10_000)
    row = contracts.voucher_claim(channel, voucher_signer.account, 1_000, 1_000)

    with reverts("InvalidSignature"):
        contracts.send(contracts.claim_call([row]), RECEIVER.address)


def test_a_delegated_voucher_key_signs_instead_of_the_payer(
    contracts: BatchSettlementContracts,
) -> None:
    channel = open_channel(contracts, 10_000, payer_authorizer=STRANGER.address)
    by_payer = contracts.voucher_claim(channel, PAYER.account, 1_000, 1_000)
    by_key = contracts.voucher_claim(channel, STRANGER, 1_000, 1_000)

    with reverts("InvalidSignature"):
        contracts.send(contracts.claim_call([by_payer]), RECEIVER.address)
    contracts.send(contracts.claim_call([by_key]), RECEIVER.address)
    assert contracts.channel(channel).total_claimed == 1_000


def test_without_a_voucher_key_the_payer_itself_signs(contracts: BatchSettlementContracts) -> None:
    channel = open_channel(contracts, 10_000, payer_authorizer=ZERO_ADDRESS)
    by_other = contracts.voucher_claim(channel, OTHER_PAYER.account, 1_000, 1_000)
    by_payer = contracts.voucher_claim(channel, PAYER.account, 1_000, 1_000)

    with reverts("InvalidSignature"):
        contracts.send(contracts.claim_call([by_other]), RECEIVER.address)
    contracts.send(contracts.claim_call([by_payer]), RECEIVER.address)
    assert contracts.channel(channel).total_claimed == 1_000


@pytest.mark.parametrize("sender", [RECEIVER, RECEIVER_AUTHORIZER], ids=["receiver", "authorizer"])
def test_the_receiver_side_claims_directly(
    contracts: BatchSettlementContracts, sender: DevAccount
) -> None:
    channel = open_channel(contracts, 10_000)
    row = contracts.voucher_claim(channel, PAYER.account, 1_000, 1_000)

    contracts.send(contracts.claim_call([row]), sender.address)

    assert contracts.channel(channel).total_claimed == 1_000


@pytest.mark.parametrize("sender", [PAYER, RELAYER, OUTSIDER], ids=["payer", "relayer", "outsider"])
def test_nobody_else_claims_directly(
    contracts: BatchSettlementContracts, sender: DevAccount
) -> None:
    channel = open_channel(contracts, 10_000)
    row = contracts.voucher_claim(channel, PAYER.account, 1_000, 1_000)

    with reverts("NotAuthorizedToClaim"):
        contracts.send(contracts.claim_call([row]), sender.address)
    assert contracts.channel(channel).total_claimed == 0


def test_anyone_relays_a_batch_the_receiver_authorizer_signed(
    contracts: BatchSettlementContracts,
) -> None:
    channels = [open_channel(contracts, 10_000) for _ in range(3)]
    rows = [
        contracts.voucher_claim(channel, PAYER.account, 2_000 + i, 1_000 + i)
        for i, channel in enumerate(channels)
    ]

    contracts.send(
        contracts.claim_with_signature_call(rows, RECEIVER_AUTHORIZER.account), RELAYER.address
    )

    assert [contracts.channel(channel).total_claimed for channel in channels] == [
        1_000,
        1_001,
        1_002,
    ]
    assert contracts.receiver_totals(RECEIVER.address) == (3_003, 0)


def test_a_claim_batch_needs_the_receiver_authorizers_signature(
    contracts: BatchSettlementContracts,
) -> None:
    channel = open_channel(contracts, 10_000)
    rows = [contracts.voucher_claim(channel, PAYER.account, 2_000, 2_000)]

    for signer in (STRANGER, RECEIVER.account, PAYER.account):
        with reverts("InvalidSignature"):
            contracts.send(contracts.claim_with_signature_call(rows, signer), RELAYER.address)
    assert contracts.channel(channel).total_claimed == 0


def test_a_signed_claim_batch_cannot_be_altered(contracts: BatchSettlementContracts) -> None:
    channel = open_channel(contracts, 10_000)
    signed = [contracts.voucher_claim(channel, PAYER.account, 2_000, 1_000)]
    call = contracts.claim_with_signature_call(signed, RECEIVER_AUTHORIZER.account)
    signature = call.args[1]
    more = [contracts.voucher_claim(channel, PAYER.account, 2_000, 2_000)]
    altered = contracts.claim_with_signature_call(more, RECEIVER_AUTHORIZER.account)

    with reverts("InvalidSignature"):
        contracts.send(
            contracts.settlement.functions.claimWithSignature(altered.args[0], signature),
            RELAYER.address,
        )
    contracts.send(call, RELAYER.address)
    assert contracts.channel(channel).total_claimed == 1_000


def test_a_signed_batch_covers_only_channels_of_its_authorizer(
    contracts: BatchSettlementContracts,
) -> None:
    own = open_channel(contracts, 10_000)
    foreign_authorizer = Account.from_key(b"\x01" * 32)
    foreign = contracts.channel_config(PAYER.address, RECEIVER.address, foreign_authorizer.address)
    contracts.send(contracts.eip3009_deposit_call(foreign, PAYER.account, 10_000), RELAYER.address)
    rows = [
        contracts.voucher_claim(own, PAYER.account, 1_000, 1_000),
        contracts.voucher_claim(foreign, PAYER.account, 1_000, 1_000),
    ]

    with reverts("NotReceiverAuthorizer"):
        contracts.send(
            contracts.claim_with_signature_call(rows, RECEIVER_AUTHORIZER.account),
            RELAYER.address,
        )
    assert contracts.channel(own).total_claimed == 0
    assert contracts.channel(foreign).total_claimed == 0


def test_an_empty_batch_is_refused(contracts: BatchSettlementContracts) -> None:
    with reverts("EmptyBatch"):
        contracts.send(contracts.claim_call([]), RECEIVER.address)
    with reverts("EmptyBatch"):
        contracts.send(
            contracts.claim_with_signature_call([], RECEIVER_AUTHORIZER.account), RELAYER.address
        )


def test_a_channel_that_was_never_funded_cannot_be_claimed(
    contracts: BatchSettlementContracts,
) -> None:
    channel = new_channel(contracts)

    with reverts("ClaimExceedsBalance"):
        claim(contracts, channel, 1)
