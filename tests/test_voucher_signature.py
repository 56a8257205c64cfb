"""The voucher check of sessions' hot path agrees with the SDK's, and is stricter where the
contract is: the digest is the SDK's EIP-712 digest, a canonical signature is accepted
exactly when the SDK accepts it, and the malleated forms the SDK accepts but the contract's
``ecrecover`` refuses (``s`` in the upper half, ``v`` 0 or 1, not 65 bytes) are refused.
"""

from __future__ import annotations

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_hash.auto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.mechanisms.evm.batch_settlement.client import sign_voucher
from x402.mechanisms.evm.batch_settlement.constants import VOUCHER_TYPES
from x402.mechanisms.evm.batch_settlement.facilitator.utils import (
    verify_batch_settlement_voucher_typed_data,
)
from x402.mechanisms.evm.batch_settlement.utils import get_batch_settlement_eip712_domain
from x402.mechanisms.evm.signers import EthAccountSigner

from x402_meter.devstack.accounts import PAYERS
from x402_meter.schemes.voucher_signature import SECP256K1_N, VoucherSignatures

UINT128_MAX = 2**128 - 1
CHANNEL_IDS = st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex())
AMOUNTS = st.integers(min_value=0, max_value=UINT128_MAX)
CHAINS = st.sampled_from([1, 8453, 84532, 31337])
KEYS = st.sampled_from([payer.private_key for payer in PAYERS[:3]])


def sdk_digest(channel_id: str, cumulative: int, chain_id: int) -> bytes:
    signable = encode_typed_data(
        domain_data=get_batch_settlement_eip712_domain(chain_id),
        message_types=VOUCHER_TYPES,
        message_data={
            "channelId": bytes.fromhex(channel_id[2:]),
            "maxClaimableAmount": cumulative,
        },
    )
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def sdk_accepts(signer: str, channel_id: str, cumulative: int, sig: str, chain_id: int) -> bool:
    return verify_batch_settlement_voucher_typed_data(
        signer=None,  # type: ignore[arg-type]  # unused on the ECDSA path
        channel_id=channel_id,
        max_claimable_amount=str(cumulative),
        payer_authorizer=signer,
        payer=signer,
        signature=sig,
        chain_id=chain_id,
    )


def signed(key: str, channel_id: str, cumulative: int, chain_id: int) -> str:
    signer = EthAccountSigner(Account.from_key(key))
    return sign_voucher(signer, channel_id, str(cumulative), f"eip155:{chain_id}").signature


def twin(signature: str) -> str:
    """The other signature of the same digest and signer: ``s`` mirrored, ``v`` flipped."""
    raw = bytes.fromhex(signature[2:])
    s = SECP256K1_N - int.from_bytes(raw[32:64], "big")
    return "0x" + (raw[:32] + s.to_bytes(32, "big") + bytes([55 - raw[64]])).hex()


@given(CHANNEL_IDS, AMOUNTS, CHAINS)
@settings(max_examples=50, deadline=None)
def test_the_digest_is_the_sdks_eip712_digest(channel_id: str, amount: int, chain: int) -> None:
    assert VoucherSignatures().digest(channel_id, amount, chain) == sdk_digest(
        channel_id, amount, chain
    )


@given(KEYS, KEYS, CHANNEL_IDS, AMOUNTS, st.integers(0, 1), CHAINS)
@settings(max_examples=40, deadline=None)
def test_a_canonical_signature_is_accepted_exactly_when_the_sdk_accepts_it(
    key: str, claimed_key: str, channel_id: str, amount: int, bump: int, chain: int
) -> None:
    """Signed by one key, claimed for another (or the same) signer, for the amount signed
    or one more: the verdicts agree."""
    signature = signed(key, channel_id, amount, chain)
    signer = Account.from_key(claimed_key).address
    checked = min(amount + bump, UINT128_MAX)
    ours = VoucherSignatures().signed_by(signer, channel_id, checked, signature, chain)
    assert ours == sdk_accepts(signer, channel_id, checked, signature, chain)
    assert ours == (key == claimed_key and checked == amount)


@given(KEYS, CHANNEL_IDS, AMOUNTS)
@settings(max_examples=20, deadline=None)
def test_the_forms_the_contract_refuses_are_refused(key: str, channel_id: str, amount: int) -> None:
    """The SDK accepts these (they recover to the signer); the contract does not."""
    signer = Account.from_key(key).address
    signature = signed(key, channel_id, amount, 31337)
    raw = bytes.fromhex(signature[2:])
    low_v = "0x" + (raw[:64] + bytes([raw[64] - 27])).hex()
    for form in (twin(signature), low_v):
        assert sdk_accepts(signer, channel_id, amount, form, 31337)
        assert not VoucherSignatures().signed_by(signer, channel_id, amount, form, 31337)
    for garbage in (signature[:-2], signature + "00", "0x", "0xzz" + signature[4:]):
        assert not VoucherSignatures().signed_by(signer, channel_id, amount, garbage, 31337)
    assert VoucherSignatures().signed_by(signer, channel_id, amount, signature, 31337)


def test_recovery_runs_in_c_when_coincurve_is_installed() -> None:
    """The check runs on the event loop only when it is fast (see ``check_signature``)."""
    assert VoucherSignatures().fast
