#pragma version ~=0.4.3
"""
@title Permit2 SignatureTransfer subset for local development chains
@notice Re-implements the signature-based transfer half of Uniswap's Permit2
        (`permitTransferFrom`, `permitWitnessTransferFrom`, unordered nonces)
        with the same ABI, EIP-712 hashing and revert reasons, so signatures
        produced by the x402 SDK for the canonical deployment verify here.
@dev The runtime code is installed with `anvil_setCode` at the canonical
     address 0x000000000022D473030F116dDEE9F6B43aC78BA3. The constructor
     never runs there, so this contract has no constructor, no immutables and
     only storage whose zero value is the correct initial state.
     Custom errors of the original are reported as plain revert strings named
     after the error (e.g. "InvalidNonce"); clients that match on the error
     name as a substring of the revert message keep working.
"""

# Bounds of the dynamic arguments. Vyper needs static bounds; these are far
# above what x402 sends (65-byte EOA signatures, a ~120 character witness
# type string) while still leaving room for EIP-1271 smart-wallet signatures.
MAX_SIGNATURE_LENGTH: constant(uint256) = 2048
MAX_WITNESS_TYPE_STRING_LENGTH: constant(uint256) = 512


struct TokenPermissions:
    token: address
    amount: uint256


struct PermitTransferFrom:
    permitted: TokenPermissions
    nonce: uint256
    deadline: uint256


struct SignatureTransferDetails:
    to: address
    requestedAmount: uint256


event UnorderedNonceInvalidation:
    owner: indexed(address)
    word: uint256
    mask: uint256


# EIP-712 domain without a version field, as in the canonical Permit2.
EIP712_DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,uint256 chainId,address verifyingContract)"
)
HASHED_NAME: constant(bytes32) = keccak256("Permit2")

TOKEN_PERMISSIONS_TYPEHASH: constant(bytes32) = keccak256(
    "TokenPermissions(address token,uint256 amount)"
)
PERMIT_TRANSFER_FROM_TYPEHASH: constant(bytes32) = keccak256(
    "PermitTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline)TokenPermissions(address token,uint256 amount)"
)
# The caller supplies the rest of the type string: the witness member
# declaration followed by all referenced struct types in EIP-712 order.
PERMIT_WITNESS_TRANSFER_FROM_TYPE_STUB: constant(String[100]) = (
    "PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline,"
)

# isValidSignature(bytes32,bytes) selector, left-aligned as ABI-encoded bytes4.
EIP1271_MAGIC_VALUE: constant(bytes32) = (
    0x1626ba7e00000000000000000000000000000000000000000000000000000000
)

# Clears the top bit of an EIP-2098 `vs` word, leaving `s`.
EIP2098_S_MASK: constant(uint256) = max_value(uint256) >> 1


# owner => word position => bitmap of used nonces (bit set = used).
nonceBitmap: public(HashMap[address, HashMap[uint256, uint256]])


@view
@external
def DOMAIN_SEPARATOR() -> bytes32:
    return self._domain_separator()


@external
def permitTransferFrom(
    permit: PermitTransferFrom,
    transferDetails: SignatureTransferDetails,
    owner: address,
    signature: Bytes[MAX_SIGNATURE_LENGTH],
):
    data_hash: bytes32 = keccak256(
        abi_encode(
            PERMIT_TRANSFER_FROM_TYPEHASH,
            self._hash_token_permissions(permit.permitted),
            msg.sender,
            permit.nonce,
            permit.deadline,
        )
    )
    self._permit_transfer_from(permit, transferDetails, owner, data_hash, signature)


@external
def permitWitnessTransferFrom(
    permit: PermitTransferFrom,
    transferDetails: SignatureTransferDetails,
    owner: address,
    witness: bytes32,
    witnessTypeString: String[MAX_WITNESS_TYPE_STRING_LENGTH],
    signature: Bytes[MAX_SIGNATURE_LENGTH],
):
    type_hash: bytes32 = keccak256(
        concat(PERMIT_WITNESS_TRANSFER_FROM_TYPE_STUB, witnessTypeString)
    )
    # The spender is msg.sender: a signature only authorises the contract it
    # names (for x402, the proxy) to pull the funds.
    data_hash: bytes32 = keccak256(
        abi_encode(
            type_hash,
            self._hash_token_permissions(permit.permitted),
            msg.sender,
            permit.nonce,
            permit.deadline,
            witness,
        )
    )
    self._permit_transfer_from(permit, transferDetails, owner, data_hash, signature)


@external
def invalidateUnorderedNonces(wordPos: uint256, mask: uint256):
    """
    @notice Marks every nonce whose bit is set in `mask` within word `wordPos`
            of the caller as used, revoking signatures that carry them.
    """
    self.nonceBitmap[msg.sender][wordPos] |= mask
    log UnorderedNonceInvalidation(owner=msg.sender, word=wordPos, mask=mask)


@internal
def _permit_transfer_from(
    permit: PermitTransferFrom,
    details: SignatureTransferDetails,
    owner: address,
    data_hash: bytes32,
    signature: Bytes[MAX_SIGNATURE_LENGTH],
):
    # Same check order as Permit2, so the same input fails with the same
    # reason on the real contract and here.
    assert block.timestamp <= permit.deadline, "SignatureExpired"
    assert details.requestedAmount <= permit.permitted.amount, "InvalidAmount"
    self._use_unordered_nonce(owner, permit.nonce)
    digest: bytes32 = keccak256(
        concat(b"\x19\x01", self._domain_separator(), data_hash)
    )
    self._verify_signature(digest, signature, owner)
    self._safe_transfer_from(
        permit.permitted.token, owner, details.to, details.requestedAmount
    )


@internal
def _use_unordered_nonce(owner: address, nonce: uint256):
    # Nonces are not sequential: the high 248 bits select a 256-bit word and
    # the low 8 bits a bit in it, so signatures can be used in any order.
    word_pos: uint256 = nonce >> 8
    bit: uint256 = 1 << (nonce & 255)
    flipped: uint256 = self.nonceBitmap[owner][word_pos] ^ bit
    self.nonceBitmap[owner][word_pos] = flipped
    # The bit was already set if flipping cleared it.
    assert flipped & bit != 0, "InvalidNonce"


@view
@internal
def _verify_signature(
    digest: bytes32, signature: Bytes[MAX_SIGNATURE_LENGTH], claimed_signer: address
):
    if claimed_signer.codesize == 0:
        r: bytes32 = empty(bytes32)
        s: bytes32 = empty(bytes32)
        v: uint8 = 0
        if len(signature) == 65:
            r = extract32(signature, 0)
            s = extract32(signature, 32)
            v = convert(slice(signature, 64, 1), uint8)
        elif len(signature) == 64:
            # EIP-2098 compact form: the top bit of the second word is v - 27.
            r = extract32(signature, 0)
            vs: uint256 = convert(extract32(signature, 32), uint256)
            s = convert(vs & EIP2098_S_MASK, bytes32)
            v = convert((vs >> 255) + 27, uint8)
        else:
            raise "InvalidSignatureLength"
        signer: address = ecrecover(digest, v, r, s)
        assert signer != empty(address), "InvalidSignature"
        assert signer == claimed_signer, "InvalidSigner"
    else:
        # Contract owners (smart wallets, EIP-7702 delegated accounts) vouch
        # for the digest themselves via EIP-1271.
        success: bool = False
        response: Bytes[32] = b""
        success, response = raw_call(
            claimed_signer,
            abi_encode(
                digest,
                signature,
                method_id=method_id("isValidSignature(bytes32,bytes)"),
            ),
            max_outsize=32,
            is_static_call=True,
            revert_on_failure=False,
        )
        assert success, "InvalidContractSignature"
        assert len(response) == 32, "InvalidContractSignature"
        assert extract32(response, 0) == EIP1271_MAGIC_VALUE, (
            "InvalidContractSignature"
        )


@internal
def _safe_transfer_from(
    token: address, owner: address, receiver: address, amount: uint256
):
    # Low-level call so tokens that return nothing from transferFrom (USDT
    # style) are accepted, like solmate's SafeTransferLib used by Permit2.
    success: bool = False
    response: Bytes[32] = b""
    success, response = raw_call(
        token,
        abi_encode(
            owner,
            receiver,
            amount,
            method_id=method_id("transferFrom(address,address,uint256)"),
        ),
        max_outsize=32,
        revert_on_failure=False,
    )
    assert success, "TRANSFER_FROM_FAILED"
    if len(response) == 0:
        # A call to an address without code also "succeeds" with no data;
        # unlike solmate, refuse to report a transfer that never happened.
        assert token.codesize != 0, "TRANSFER_FROM_FAILED"
    else:
        assert len(response) == 32, "TRANSFER_FROM_FAILED"
        assert convert(response, uint256) == 1, "TRANSFER_FROM_FAILED"


@pure
@internal
def _hash_token_permissions(permitted: TokenPermissions) -> bytes32:
    return keccak256(
        abi_encode(TOKEN_PERMISSIONS_TYPEHASH, permitted.token, permitted.amount)
    )


@view
@internal
def _domain_separator() -> bytes32:
    # Computed per call rather than cached: there is no constructor to cache
    # it in, and it must follow whatever chain id the dev chain runs with.
    return keccak256(
        abi_encode(EIP712_DOMAIN_TYPEHASH, HASHED_NAME, chain.id, self)
    )
