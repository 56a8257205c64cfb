"""A voucher's signature, checked as the batch-settlement contract checks it at claim time.

Every voucher a server admits is one it must later be able to claim: the contract recovers
the signer of the voucher's EIP-712 digest with ``ecrecover`` and accepts only a canonical
65-byte signature (``v`` 27 or 28, ``s`` in the lower half of the curve order). The SDK's
``verify_batch_settlement_voucher_typed_data`` also accepts the malleated twin of a valid
signature (``s`` in the upper half, or ``v`` 0 or 1), which the contract refuses: a payer
could be served on vouchers whose claim then reverts. So the form is checked here first.

It is also the hot path of every voucher, so the digest is built from its parts: the
domain separator once per chain (by the SDK's EIP-712 code), then per voucher two
keccaks over fixed-size words, instead of encoding the typed data again each time
(a tenth of the time). ``tests/test_voucher_signature.py`` checks the digest against the
SDK's and the verdict against the SDK's on canonical signatures.
"""

from __future__ import annotations

from typing import Final

from eth_account.messages import encode_typed_data
from eth_hash.auto import keccak
from eth_keys.backends.coincurve import CoinCurveECCBackend
from eth_keys.exceptions import BadSignature
from eth_keys.main import KeyAPI
from eth_utils.exceptions import ValidationError
from x402.mechanisms.evm.batch_settlement.constants import VOUCHER_TYPES
from x402.mechanisms.evm.batch_settlement.utils import get_batch_settlement_eip712_domain

SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_N_HALF: Final = SECP256K1_N // 2
VOUCHER_TYPE: Final = (
    "Voucher("
    + ",".join(f"{field['type']} {field['name']}" for field in VOUCHER_TYPES["Voucher"])
    + ")"
)
"""The EIP-712 type of a voucher, as the SDK declares it."""
VOUCHER_TYPEHASH: Final = keccak(VOUCHER_TYPE.encode())


def _domain_separator(chain_id: int) -> bytes:
    """The batch-settlement domain's separator on ``chain_id``, by the SDK's EIP-712 code."""
    signable = encode_typed_data(
        domain_data=get_batch_settlement_eip712_domain(chain_id),
        message_types=VOUCHER_TYPES,
        message_data={"channelId": b"\x00" * 32, "maxClaimableAmount": 0},
    )
    return bytes(signable.header)


class VoucherSignatures:
    """Checks vouchers' signatures. Keeps each chain's domain separator (a server offers a
    network or two: the dictionary stays that small)."""

    def __init__(self) -> None:
        self._domains: dict[int, bytes] = {}
        self._keys = KeyAPI()
        self.fast = isinstance(self._keys.backend, CoinCurveECCBackend)
        """Whether recovery runs in C (coincurve, a tenth of a millisecond: fine on the event
        loop) rather than in eth-keys' pure Python (milliseconds: for a worker thread)."""

    def digest(self, channel_id: str, cumulative: int, chain_id: int) -> bytes:
        """The voucher's EIP-712 digest (what the payer signed and the contract recovers)."""
        domain = self._domains.get(chain_id)
        if domain is None:
            domain = self._domains[chain_id] = _domain_separator(chain_id)
        channel = bytes.fromhex(channel_id.removeprefix("0x"))
        struct = keccak(VOUCHER_TYPEHASH + channel + cumulative.to_bytes(32, "big"))
        return keccak(b"\x19\x01" + domain + struct)

    def signed_by(
        self, signer: str, channel_id: str, cumulative: int, signature: str, chain_id: int
    ) -> bool:
        """Whether ``signature`` is a canonical signature by ``signer`` (an address) of the
        voucher for ``cumulative`` on ``channel_id``: one the contract will accept."""
        try:
            raw = bytes.fromhex(signature.removeprefix("0x"))
        except ValueError:
            return False
        if len(raw) != 65:
            return False
        r, s, v = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64]
        if v not in (27, 28) or not (0 < r < SECP256K1_N and 0 < s <= SECP256K1_N_HALF):
            return False
        message = self.digest(channel_id, cumulative, chain_id)
        try:
            public_key = self._keys.ecdsa_recover(message, self._keys.Signature(vrs=(v - 27, r, s)))
        except (BadSignature, ValidationError):
            return False
        return public_key.to_canonical_address() == bytes.fromhex(signer.removeprefix("0x"))


__all__ = ["VoucherSignatures"]
