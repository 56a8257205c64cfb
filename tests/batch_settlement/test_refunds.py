"""Cooperative refunds return only unclaimed escrow, only with the receiver side's consent
(its call, or its authorizer's Refund signature for the channel's current nonce), and every
refund uses up its nonce."""

from __future__ import annotations

import pytest

from tests.batch_settlement.chain import (
    OUTSIDER,
    PAYER,
    RECEIVER,
    RECEIVER_AUTHORIZER,
    RELAYER,
    STRANGER,
    balance,
    claim,
    escrow,
    open_channel,
    reverts,
)
from x402_meter.devstack.accounts import DevAccount
from x402_meter.devstack.batch_settlement import BatchSettlementContracts


def test_a_refund_returns_at_most_the_unclaimed_balance(
    contracts: BatchSettlementContracts,
) -> None:
    channel = open_channel(contracts, 10_000)
    claim(contracts, channel, 4_000)
    payer_before = balance(contracts, PAYER.address)

    contracts.send(contracts.refund_call(channel, 1_000_000), RECEIVER.address)

    assert balance(contracts, PAYER.address) == payer_before + 6_000
    assert contracts.channel(channel).balance == 4_000
    assert contracts.channel(channel).total_claimed == 4_000
    assert escrow(contracts) == 4_000


def test_a_partial_refund_returns_exactly_its_amount(contracts: BatchSettlementContracts) -> None:
    channel = open_channel(contracts, 10_000)
    payer_before = balance(contracts, PAYER.address)

    contracts.send(contracts.refund_call(channel, 1_500), RECEIVER_AUTHORIZER.address)

    assert balance(contracts, PAYER.address) == payer_before + 1_500
    assert contracts.channel(channel).balance == 8_500
    assert escrow(contracts) == 8_500


@pytest.mark.parametrize("sender", [PAYER, RELAYER, OUTSIDER], ids=["payer", "relayer", "outsider"])
def test_only_the_receiver_side_refunds_without_a_signature(
    contracts: BatchSettlementContracts, sender: DevAccount
) -> None:
    channel = open_channel(contracts, 10_000)

    with reverts("NotAuthorizedToRefund"):
        contracts.send(contracts.refund_call(channel, 1_000), sender.address)
    assert contracts.channel(channel).balance == 10_000


def test_a_refund_of_nothing_is_refused(contracts: BatchSettlementContracts) -> None:
    channel = open_channel(contracts, 10_000)

    with reverts("ZeroRefund"):
        contracts.send(contracts.refund_call(channel, 0), RECEIVER.address)
    assert contracts.refund_nonce(channel) == 0


def test_anyone_relays_a_refund_the_receiver_authorizer_signed_once(
    contracts: BatchSettlementContracts,
) -> None:
    channel = open_channel(contracts, 10_000)
    payer_before = balance(contracts, PAYER.address)
    signed = contracts.refund_with_signature_call(channel, 2_000, 0, RECEIVER_AUTHORIZER.account)

    contracts.send(signed, RELAYER.address)

    assert balance(contracts, PAYER.address) == payer_before + 2_000
    assert contracts.refund_nonce(channel) == 1
    with reverts("InvalidRefundNonce"):
        contracts.send(signed, RELAYER.address)
    assert balance(contracts, PAYER.address) == payer_before + 2_000


def test_a_signed_refund_binds_its_amount_nonce_and_signer(
    contracts: BatchSettlementContracts,
) -> None:
    channel = open_channel(contracts, 10_000)
    signed = contracts.refund_with_signature_call(channel, 2_000, 0, RECEIVER_AUTHORIZER.account)
    config, _, nonce, signature = signed.args
    functions = contracts.settlement.functions

    with reverts("InvalidSignature"):
        contracts.send(
            functions.refundWithSignature(config, 2_001, nonce, signature), RELAYER.address
        )
    with reverts("InvalidRefundNonce"):
        contracts.send(functions.refundWithSignature(config, 2_000, 1, signature), RELAYER.address)
    for signer in (STRANGER, RECEIVER.account, PAYER.account):
        with reverts("InvalidSignature"):
            contracts.send(
                contracts.refund_with_signature_call(channel, 2_000, 0, signer), RELAYER.address
            )
    assert contracts.channel(channel).balance == 10_000
    assert contracts.refund_nonce(channel) == 0


def test_a_direct_refund_uses_up_the_nonce_of_a_presigned_one(
    contracts: BatchSettlementContracts,
) -> None:
    channel = open_channel(contracts, 10_000)
    presigned = contracts.refund_with_signature_call(channel, 2_000, 0, RECEIVER_AUTHORIZER.account)

    contracts.send(contracts.refund_call(channel, 500), RECEIVER.address)

    with reverts("InvalidRefundNonce"):
        contracts.send(presigned, RELAYER.address)
    assert contracts.channel(channel).balance == 9_500


def test_a_refund_with_nothing_unclaimed_moves_nothing_but_uses_its_nonce(
    contracts: BatchSettlementContracts,
) -> None:
    channel = open_channel(contracts, 10_000)
    claim(contracts, channel, 10_000)
    payer_before = balance(contracts, PAYER.address)

    receipt = contracts.send(
        contracts.refund_with_signature_call(channel, 1_000, 0, RECEIVER_AUTHORIZER.account),
        RELAYER.address,
    )

    assert receipt["logs"] == []
    assert balance(contracts, PAYER.address) == payer_before
    assert contracts.refund_nonce(channel) == 1
    assert contracts.channel(channel).balance == 10_000


def test_the_sdks_claim_then_refund_multicall_is_all_or_nothing(
    contracts: BatchSettlementContracts,
) -> None:
    channel = open_channel(contracts, 10_000)
    rows = [contracts.voucher_claim(channel, PAYER.account, 3_000, 3_000)]
    claim = contracts.claim_with_signature_call(rows, RECEIVER_AUTHORIZER.account)

    stale = contracts.refund_with_signature_call(channel, 99_999, 7, RECEIVER_AUTHORIZER.account)
    with reverts("InvalidRefundNonce"):
        contracts.send(contracts.multicall_call([claim, stale]), RELAYER.address)
    assert contracts.channel(channel).total_claimed == 0

    payer_before = balance(contracts, PAYER.address)
    refund = contracts.refund_with_signature_call(channel, 99_999, 0, RECEIVER_AUTHORIZER.account)
    contracts.send(contracts.multicall_call([claim, refund]), RELAYER.address)
    assert contracts.channel(channel).total_claimed == 3_000
    assert contracts.channel(channel).balance == 3_000
    assert balance(contracts, PAYER.address) == payer_before + 7_000
