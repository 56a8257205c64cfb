"""A channel id is the EIP-712 hash of its whole config: the contract and the SDK agree on it,
and what is signed for one channel is worthless on any other."""

from __future__ import annotations

from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.mechanisms.evm.batch_settlement.constants import (
    CLAIM_BATCH_TYPES,
    MAX_WITHDRAW_DELAY,
    MIN_WITHDRAW_DELAY,
    REFUND_TYPES,
    VOUCHER_TYPES,
)
from x402.mechanisms.evm.batch_settlement.facilitator.claim import build_voucher_claim_args
from x402.mechanisms.evm.batch_settlement.facilitator.utils import to_contract_channel_config
from x402.mechanisms.evm.batch_settlement.utils import (
    coerce_bytes32,
    get_batch_settlement_eip712_domain,
)

from tests.batch_settlement.chain import (
    PAYER,
    RECEIVER,
    RELAYER,
    open_channel,
    reverts,
)
from x402_meter.devstack.batch_settlement import BatchSettlementContracts

addresses = st.binary(min_size=20, max_size=20).map(lambda raw: "0x" + raw.hex())


@settings(max_examples=25)
@given(
    payer=addresses,
    payer_authorizer=addresses,
    receiver=addresses,
    receiver_authorizer=addresses,
    withdraw_delay=st.integers(MIN_WITHDRAW_DELAY, MAX_WITHDRAW_DELAY),
    salt=st.binary(min_size=32, max_size=32),
)
def test_the_contract_derives_the_channel_id_the_sdk_computes(
    batch_chain: BatchSettlementContracts,
    payer: str,
    payer_authorizer: str,
    receiver: str,
    receiver_authorizer: str,
    withdraw_delay: int,
    salt: bytes,
) -> None:
    config = batch_chain.channel_config(
        payer,
        receiver,
        receiver_authorizer,
        payer_authorizer=payer_authorizer,
        withdraw_delay=withdraw_delay,
        salt=salt,
    )
    on_chain = batch_chain.settlement.functions.getChannelId(
        to_contract_channel_config(config)
    ).call()
    assert "0x" + on_chain.hex() == batch_chain.channel_id(config)


def digest(network_chain_id: int, types: dict[str, list[dict[str, str]]], message: object) -> bytes:
    signable = encode_typed_data(
        domain_data=get_batch_settlement_eip712_domain(network_chain_id),
        message_types=types,
        message_data=message,  # type: ignore[arg-type]
    )
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def test_the_contract_digests_are_the_typed_data_the_sdk_signs(
    contracts: BatchSettlementContracts,
) -> None:
    chain_id = contracts.w3.eth.chain_id
    functions = contracts.settlement.functions
    channel = contracts.channel_config(PAYER.address, RECEIVER.address, RELAYER.address)
    channel_id = coerce_bytes32(contracts.channel_id(channel))
    rows = [
        contracts.voucher_claim(channel, PAYER.account, 700, 650),
        contracts.voucher_claim(channel, PAYER.account, 900, 900),
    ]

    assert functions.getVoucherDigest(channel_id, 700).call() == digest(
        chain_id, VOUCHER_TYPES, {"channelId": channel_id, "maxClaimableAmount": 700}
    )
    assert functions.getRefundDigest(channel_id, 3, 55).call() == digest(
        chain_id, REFUND_TYPES, {"channelId": channel_id, "nonce": 3, "amount": 55}
    )
    entries = [
        {"channelId": channel_id, "maxClaimableAmount": 700, "totalClaimed": 650},
        {"channelId": channel_id, "maxClaimableAmount": 900, "totalClaimed": 900},
    ]
    assert functions.getClaimBatchDigest(build_voucher_claim_args(rows)).call() == digest(
        chain_id, CLAIM_BATCH_TYPES, {"claims": entries}
    )


def test_a_voucher_for_one_channel_cannot_be_claimed_on_another(
    contracts: BatchSettlementContracts,
) -> None:
    signed_for = open_channel(contracts, 5_000)
    other = open_channel(contracts, 5_000)  # same parties, another salt
    voucher = contracts.voucher_claim(signed_for, PAYER.account, 1_000, 1_000)
    replayed = contracts.voucher_claim(other, PAYER.account, 1_000, 1_000)
    replayed.signature = voucher.signature

    with reverts("InvalidSignature"):
        contracts.send(contracts.claim_call([replayed]), RECEIVER.address)

    assert contracts.channel(other).total_claimed == 0
    contracts.send(contracts.claim_call([voucher]), RECEIVER.address)
    assert contracts.channel(signed_for).total_claimed == 1_000
