#pragma version ~=0.4.3
"""
@title USDC-like test token for local development chains
@notice ERC-20 with EIP-2612 `permit` and EIP-3009 transfer authorizations,
        hashed exactly like Circle's FiatToken v2, so the x402 SDK's `exact`
        (EIP-3009) and `upto` (Permit2, optionally with EIP-2612 gas
        sponsoring) flows behave as they do against real USDC.
@dev Revert strings are part of the interface: the x402 facilitator maps
     substrings of them ("authorization is expired", "transfer amount exceeds
     balance", ...) to its error reasons. Change them only together with the
     SDK's expectations.
     Only the deployer (`minter`) can mint; there is no other privileged role.
"""

# ---------------------------------------------------------------------------
# EIP-712 type hashes
# ---------------------------------------------------------------------------

EIP712_DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
PERMIT_TYPEHASH: constant(bytes32) = keccak256(
    "Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"
)
TRANSFER_WITH_AUTHORIZATION_TYPEHASH: constant(bytes32) = keccak256(
    "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)
RECEIVE_WITH_AUTHORIZATION_TYPEHASH: constant(bytes32) = keccak256(
    "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)
CANCEL_AUTHORIZATION_TYPEHASH: constant(bytes32) = keccak256(
    "CancelAuthorization(address authorizer,bytes32 nonce)"
)

# Upper bound for a canonical (low-s) secp256k1 signature: n / 2 =
# 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0 (a 32-byte
# hex literal would be typed bytes32 by Vyper, hence the decimal form).
# Rejecting s above it removes ECDSA malleability (EIP-2).
SECP256K1N_HALF: constant(uint256) = (
    57896044618658097711785492504343953926418782139537452191302581570759080747168
)

# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------

# `from`/`to` are Python keywords and cannot be Vyper identifiers; the event
# topics only depend on the types, so these names do not change the ABI hash.
event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256

event Approval:
    owner: indexed(address)
    spender: indexed(address)
    value: uint256

event AuthorizationUsed:
    authorizer: indexed(address)
    nonce: indexed(bytes32)

event AuthorizationCanceled:
    authorizer: indexed(address)
    nonce: indexed(bytes32)

# ---------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------

name: public(String[64])
symbol: public(String[32])
version: public(String[16])
decimals: public(uint8)

totalSupply: public(uint256)
balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])

minter: public(address)

# EIP-2612 sequential nonces.
nonces: public(HashMap[address, uint256])

# EIP-3009 random nonces: True once an authorization was used or canceled.
authorizationState: public(HashMap[address, HashMap[bytes32, bool]])


@deploy
def __init__(
    name_: String[64], symbol_: String[32], version_: String[16], decimals_: uint8
):
    self.name = name_
    self.symbol = symbol_
    self.version = version_
    self.decimals = decimals_
    self.minter = msg.sender


# ---------------------------------------------------------------------------
# ERC-20
# ---------------------------------------------------------------------------


@external
def transfer(receiver: address, amount: uint256) -> bool:
    self._transfer(msg.sender, receiver, amount)
    return True


@external
def transferFrom(owner: address, receiver: address, amount: uint256) -> bool:
    current: uint256 = self.allowance[owner][msg.sender]
    # An infinite approval is never consumed (same as OpenZeppelin / USDC),
    # which keeps Permit2's one-time max approval usable forever.
    if current != max_value(uint256):
        assert current >= amount, "ERC20: insufficient allowance"
        self.allowance[owner][msg.sender] = unsafe_sub(current, amount)
    self._transfer(owner, receiver, amount)
    return True


@external
def approve(spender: address, amount: uint256) -> bool:
    self._approve(msg.sender, spender, amount)
    return True


@external
def mint(receiver: address, amount: uint256):
    assert msg.sender == self.minter, "Token: caller is not the minter"
    assert receiver != empty(address), "ERC20: mint to the zero address"
    self.totalSupply += amount
    # Cannot overflow: every balance is bounded by totalSupply.
    self.balanceOf[receiver] = unsafe_add(self.balanceOf[receiver], amount)
    log Transfer(sender=empty(address), receiver=receiver, value=amount)


# ---------------------------------------------------------------------------
# EIP-712
# ---------------------------------------------------------------------------


@view
@external
def DOMAIN_SEPARATOR() -> bytes32:
    return self._domain_separator()


# ---------------------------------------------------------------------------
# EIP-2612
# ---------------------------------------------------------------------------


@external
def permit(
    owner: address,
    spender: address,
    amount: uint256,
    deadline: uint256,
    v: uint8,
    r: bytes32,
    s: bytes32,
):
    assert block.timestamp <= deadline, "EIP2612: permit is expired"
    nonce: uint256 = self.nonces[owner]
    struct_hash: bytes32 = keccak256(
        abi_encode(PERMIT_TYPEHASH, owner, spender, amount, nonce, deadline)
    )
    assert self._is_signed_by(struct_hash, owner, v, r, s), "EIP2612: invalid signature"
    self.nonces[owner] = unsafe_add(nonce, 1)
    self._approve(owner, spender, amount)


# ---------------------------------------------------------------------------
# EIP-3009
# ---------------------------------------------------------------------------


@external
def transferWithAuthorization(
    from_: address,
    to: address,
    amount: uint256,
    validAfter: uint256,
    validBefore: uint256,
    nonce: bytes32,
    v: uint8,
    r: bytes32,
    s: bytes32,
):
    self._use_authorization(
        TRANSFER_WITH_AUTHORIZATION_TYPEHASH,
        from_,
        to,
        amount,
        validAfter,
        validBefore,
        nonce,
        v,
        r,
        s,
    )
    self._transfer(from_, to, amount)


@external
def receiveWithAuthorization(
    from_: address,
    to: address,
    amount: uint256,
    validAfter: uint256,
    validBefore: uint256,
    nonce: bytes32,
    v: uint8,
    r: bytes32,
    s: bytes32,
):
    # Only the payee may submit, so a front-runner cannot pull the funds
    # outside of the payee's own (e.g. deposit) transaction.
    assert msg.sender == to, "EIP3009: caller must be the payee"
    self._use_authorization(
        RECEIVE_WITH_AUTHORIZATION_TYPEHASH,
        from_,
        to,
        amount,
        validAfter,
        validBefore,
        nonce,
        v,
        r,
        s,
    )
    self._transfer(from_, to, amount)


@external
def cancelAuthorization(
    authorizer: address, nonce: bytes32, v: uint8, r: bytes32, s: bytes32
):
    assert not self.authorizationState[authorizer][nonce], (
        "EIP3009: authorization is used or canceled"
    )
    struct_hash: bytes32 = keccak256(
        abi_encode(CANCEL_AUTHORIZATION_TYPEHASH, authorizer, nonce)
    )
    assert self._is_signed_by(struct_hash, authorizer, v, r, s), (
        "EIP3009: invalid signature"
    )
    self.authorizationState[authorizer][nonce] = True
    log AuthorizationCanceled(authorizer=authorizer, nonce=nonce)


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


@internal
def _transfer(owner: address, receiver: address, amount: uint256):
    assert receiver != empty(address), "ERC20: transfer to the zero address"
    balance: uint256 = self.balanceOf[owner]
    assert balance >= amount, "ERC20: transfer amount exceeds balance"
    self.balanceOf[owner] = unsafe_sub(balance, amount)
    # Cannot overflow: the sum of all balances equals totalSupply.
    self.balanceOf[receiver] = unsafe_add(self.balanceOf[receiver], amount)
    log Transfer(sender=owner, receiver=receiver, value=amount)


@internal
def _approve(owner: address, spender: address, amount: uint256):
    self.allowance[owner][spender] = amount
    log Approval(owner=owner, spender=spender, value=amount)


@internal
def _use_authorization(
    typehash: bytes32,
    authorizer: address,
    to: address,
    amount: uint256,
    valid_after: uint256,
    valid_before: uint256,
    nonce: bytes32,
    v: uint8,
    r: bytes32,
    s: bytes32,
):
    # Bounds are exclusive on both sides, as in FiatToken v2.
    assert block.timestamp > valid_after, "EIP3009: authorization is not yet valid"
    assert block.timestamp < valid_before, "EIP3009: authorization is expired"
    assert not self.authorizationState[authorizer][nonce], (
        "EIP3009: authorization is used or canceled"
    )
    struct_hash: bytes32 = keccak256(
        abi_encode(typehash, authorizer, to, amount, valid_after, valid_before, nonce)
    )
    assert self._is_signed_by(struct_hash, authorizer, v, r, s), (
        "EIP3009: invalid signature"
    )
    self.authorizationState[authorizer][nonce] = True
    log AuthorizationUsed(authorizer=authorizer, nonce=nonce)


@view
@internal
def _domain_separator() -> bytes32:
    # Recomputed on every call instead of cached at deployment, so the
    # separator stays correct when the chain id differs from the one the
    # token was deployed on (forks, `anvil --chain-id`, state dumps).
    return keccak256(
        abi_encode(
            EIP712_DOMAIN_TYPEHASH,
            keccak256(self.name),
            keccak256(self.version),
            chain.id,
            self,
        )
    )


@view
@internal
def _is_signed_by(
    struct_hash: bytes32, signer: address, v: uint8, r: bytes32, s: bytes32
) -> bool:
    """
    @dev True iff (v, r, s) is a canonical secp256k1 signature by `signer`
         over the EIP-712 digest of `struct_hash`.
    """
    # Non-canonical signatures are rejected outright instead of normalised:
    # accepting both (v, s) and (v', n - s) would give every authorization two
    # valid encodings.
    if v != 27 and v != 28:
        return False
    if convert(s, uint256) > SECP256K1N_HALF:
        return False
    digest: bytes32 = keccak256(
        concat(b"\x19\x01", self._domain_separator(), struct_hash)
    )
    recovered: address = ecrecover(digest, v, r, s)
    # ecrecover yields the zero address for unrecoverable input; never let
    # that match a zero `signer`.
    return recovered != empty(address) and recovered == signer
