#pragma version ~=0.4.3
"""
@title x402 `batch-settlement` payment channels for local development chains
@notice A payer escrows tokens in a channel once; the receiver side later
        records what the payer's cumulative vouchers allow (`claim`,
        `claimWithSignature`) and sweeps the recorded amounts in one transfer
        (`settle`). Unclaimed escrow goes back to the payer through a
        cooperative refund (receiver side) or a timed withdrawal (payer side,
        only after the channel's withdraw delay).
@dev Same ABI, events, EIP-712 domain ("x402 Batch Settlement", "1") and typed
     data as the x402 SDKs expect from the canonical x402BatchSettlement, so
     the SDK's clients and facilitator work against it unchanged.

     The runtime code is installed with `anvil_setCode` at
     0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003: no constructor ever runs, so
     there are no immutables, every storage value starts at zero, the EIP-712
     domain separator is computed per call from `chain.id` and `self`, and the
     reentrancy lock lives in transient storage (EVM >= cancun).

     Failures revert with a string that names the reference contract's custom
     error ("ClaimExceedsCeiling", "InvalidSignature", ...), as the other dev
     contracts do, so a facilitator's error message says what went wrong.

     Bounds (Vyper copies dynamic arguments into statically sized memory, and
     memory costs gas quadratically in its size, so they are kept small):
     a claim batch holds at most MAX_CLAIMS rows (the SDK's channel manager
     claims 100 per batch by default), and a voucher signature is one 65-byte ECDSA signature: every
     payer on the dev chain is an EOA (the dev token's EIP-3009 functions
     accept EOA signatures only, too).
"""

# ---------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------

MAX_CLAIMS: constant(uint256) = 128
MAX_VOUCHER_SIGNATURE_LENGTH: constant(uint256) = 65
# Receiver-authorizer signatures are single arguments, cheap to bound loosely:
# room for an EIP-1271 contract authorizer's longer signatures.
MAX_AUTHORIZER_SIGNATURE_LENGTH: constant(uint256) = 2048
MAX_COLLECTOR_DATA_LENGTH: constant(uint256) = 2048
# `multicall` carries what the SDK facilitator batches (a claim of one
# channel's vouchers, then a refund). Every function of this contract returns
# at most two words, so MAX_MULTICALL_RESULT never truncates a result.
MAX_MULTICALL_CALLS: constant(uint256) = 8
MAX_MULTICALL_CALL_DATA: constant(uint256) = 8192
MAX_MULTICALL_RESULT: constant(uint256) = 64

# ---------------------------------------------------------------------------
# Protocol constants
# ---------------------------------------------------------------------------

MIN_WITHDRAW_DELAY: public(constant(uint40)) = 900  # 15 minutes
MAX_WITHDRAW_DELAY: public(constant(uint40)) = 2592000  # 30 days

EIP712_DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
HASHED_NAME: constant(bytes32) = keccak256("x402 Batch Settlement")
HASHED_VERSION: constant(bytes32) = keccak256("1")

CHANNEL_CONFIG_TYPEHASH: public(constant(bytes32)) = keccak256(
    "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
)
VOUCHER_TYPEHASH: public(constant(bytes32)) = keccak256(
    "Voucher(bytes32 channelId,uint128 maxClaimableAmount)"
)
REFUND_TYPEHASH: public(constant(bytes32)) = keccak256(
    "Refund(bytes32 channelId,uint256 nonce,uint128 amount)"
)
CLAIM_ENTRY_TYPEHASH: public(constant(bytes32)) = keccak256(
    "ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
)
CLAIM_BATCH_TYPEHASH: public(constant(bytes32)) = keccak256(
    "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
)

# n / 2 of secp256k1 (see Token.vy): signatures with a larger s are the
# malleable twin of a canonical one and are refused.
SECP256K1N_HALF: constant(uint256) = (
    57896044618658097711785492504343953926418782139537452191302581570759080747168
)
# isValidSignature(bytes32,bytes) selector, left-aligned as ABI-encoded bytes4.
EIP1271_MAGIC_VALUE: constant(bytes32) = (
    0x1626ba7e00000000000000000000000000000000000000000000000000000000
)

# ---------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------


# Everything that identifies a channel; its EIP-712 hash is the channel id.
struct ChannelConfig:
    payer: address
    payerAuthorizer: address
    receiver: address
    receiverAuthorizer: address
    token: address
    withdrawDelay: uint40
    salt: bytes32


struct Voucher:
    channel: ChannelConfig
    maxClaimableAmount: uint128


# `totalClaimed` is the cumulative amount the receiver side claims, not a
# delta: replaying an applied claim changes nothing.
struct VoucherClaim:
    voucher: Voucher
    signature: Bytes[MAX_VOUCHER_SIGNATURE_LENGTH]
    totalClaimed: uint128


struct ChannelState:
    balance: uint128
    totalClaimed: uint128


struct WithdrawalState:
    amount: uint128
    initiatedAt: uint40


struct ReceiverState:
    totalClaimed: uint128
    totalSettled: uint128


interface IDepositCollector:
    def collect(
        payer: address,
        token: address,
        amount: uint256,
        channelId: bytes32,
        collectorData: Bytes[MAX_COLLECTOR_DATA_LENGTH],
    ): nonpayable


interface IERC20Balance:
    def balanceOf(owner: address) -> uint256: view


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------

event ChannelCreated:
    channelId: indexed(bytes32)
    config: ChannelConfig

event ChannelClosed:
    channelId: indexed(bytes32)
    config: ChannelConfig

event Deposited:
    channelId: indexed(bytes32)
    sender: indexed(address)
    amount: uint128
    newBalance: uint128

event Claimed:
    channelId: indexed(bytes32)
    sender: indexed(address)
    claimAmount: uint128
    newTotalClaimed: uint128

event Settled:
    receiver: indexed(address)
    token: indexed(address)
    sender: indexed(address)
    amount: uint128

event Refunded:
    channelId: indexed(bytes32)
    sender: indexed(address)
    amount: uint128

event WithdrawInitiated:
    channelId: indexed(bytes32)
    amount: uint128
    finalizeAfter: uint40

event WithdrawFinalized:
    channelId: indexed(bytes32)
    sender: indexed(address)
    amount: uint128

# ---------------------------------------------------------------------------
# Storage (read through the explicit getters below, which return the tuples
# the SDK's ABI declares)
#
# Each two-field record is packed into one word, first field in the low 128
# bits, as Solidity lays out the reference contract's structs: a claim then
# reads one cold slot instead of two, and a channel's first claim rewrites a
# slot its deposit already made non-zero instead of filling a fresh one.
# The _load_*/_store_* functions below are the only code touching them.
# ---------------------------------------------------------------------------

channel_words: HashMap[bytes32, uint256]
withdrawal_words: HashMap[bytes32, uint256]
receiver_words: HashMap[address, HashMap[address, uint256]]
# Next nonce a signed Refund must carry; every executed refund advances it.
refund_nonce: HashMap[bytes32, uint256]

# ---------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------


@external
def multicall(
    data: DynArray[Bytes[MAX_MULTICALL_CALL_DATA], MAX_MULTICALL_CALLS]
) -> DynArray[Bytes[MAX_MULTICALL_RESULT], MAX_MULTICALL_CALLS]:
    """
    @notice Runs each call against this contract in order, as the caller
            (delegatecall keeps msg.sender), all or nothing: the first failing
            call reverts the batch with that call's revert data.
    """
    results: DynArray[Bytes[MAX_MULTICALL_RESULT], MAX_MULTICALL_CALLS] = []
    for call: Bytes[MAX_MULTICALL_CALL_DATA] in data:
        results.append(
            raw_call(
                self,
                call,
                max_outsize=MAX_MULTICALL_RESULT,
                is_delegate_call=True,
            )
        )
    return results


# ---------------------------------------------------------------------------
# Deposits
# ---------------------------------------------------------------------------


@external
@nonreentrant
def deposit(
    config: ChannelConfig,
    amount: uint128,
    collector: address,
    collectorData: Bytes[MAX_COLLECTOR_DATA_LENGTH],
):
    """
    @notice Credits `amount` to the channel of `config`, pulled from the payer
            by `collector` (which interprets `collectorData`).
    @dev Any collector may be named: what it does is checked by its effect,
         this contract's token balance must grow by exactly `amount`.
    """
    assert config.payer != empty(address), "InvalidChannel"
    assert config.receiver != empty(address), "InvalidChannel"
    assert config.receiverAuthorizer != empty(address), "InvalidChannel"
    assert config.token != empty(address), "InvalidChannel"
    assert (
        config.withdrawDelay >= MIN_WITHDRAW_DELAY
        and config.withdrawDelay <= MAX_WITHDRAW_DELAY
    ), "WithdrawDelayOutOfRange"
    assert amount != 0, "ZeroDeposit"
    assert collector != empty(address), "InvalidCollector"

    channel_id: bytes32 = self._channel_id(config, self._domain_separator())
    state: ChannelState = self._load_channel(channel_id)
    assert amount <= max_value(uint128) - state.balance, "DepositOverflow"
    new_balance: uint128 = state.balance + amount
    # Credited before the external call; the collector cannot re-enter.
    self._store_channel(
        channel_id, ChannelState(balance=new_balance, totalClaimed=state.totalClaimed)
    )

    held_before: uint256 = staticcall IERC20Balance(config.token).balanceOf(self)
    extcall IDepositCollector(collector).collect(
        config.payer, config.token, convert(amount, uint256), channel_id, collectorData
    )
    held_after: uint256 = staticcall IERC20Balance(config.token).balanceOf(self)
    assert held_after >= held_before, "DepositCollectionFailed"
    assert held_after - held_before == convert(amount, uint256), (
        "DepositCollectionFailed"
    )

    if state.balance == 0 and state.totalClaimed == 0:
        log ChannelCreated(channelId=channel_id, config=config)
    log Deposited(
        channelId=channel_id, sender=msg.sender, amount=amount, newBalance=new_balance
    )


# ---------------------------------------------------------------------------
# Claims and the settlement sweep
# ---------------------------------------------------------------------------


@external
@nonreentrant
def claim(voucherClaims: DynArray[VoucherClaim, MAX_CLAIMS]):
    """
    @notice Records the claims; the caller must be the receiver or the
            receiver authorizer of every row's channel.
    """
    assert len(voucherClaims) != 0, "EmptyBatch"
    domain: bytes32 = self._domain_separator()
    for row: VoucherClaim in voucherClaims:
        assert (
            msg.sender == row.voucher.channel.receiver
            or msg.sender == row.voucher.channel.receiverAuthorizer
        ), "NotAuthorizedToClaim"
        self._apply_claim(row, self._channel_id(row.voucher.channel, domain), domain)


@external
@nonreentrant
def claimWithSignature(
    voucherClaims: DynArray[VoucherClaim, MAX_CLAIMS],
    authorizerSignature: Bytes[MAX_AUTHORIZER_SIGNATURE_LENGTH],
):
    """
    @notice Records the claims on the strength of the receiver authorizer's
            EIP-712 ClaimBatch signature over all rows; anyone may submit.
    @dev Every row must name the same receiver authorizer.
    """
    assert len(voucherClaims) != 0, "EmptyBatch"
    domain: bytes32 = self._domain_separator()
    channel_ids: DynArray[bytes32, MAX_CLAIMS] = self._channel_ids(voucherClaims, domain)
    authorizer: address = voucherClaims[0].voucher.channel.receiverAuthorizer
    digest: bytes32 = self._claim_batch_digest(voucherClaims, channel_ids, domain)
    assert self._is_valid_signature_now(authorizer, digest, authorizerSignature), (
        "InvalidSignature"
    )
    for i: uint256 in range(len(voucherClaims), bound=MAX_CLAIMS):
        assert voucherClaims[i].voucher.channel.receiverAuthorizer == authorizer, (
            "NotReceiverAuthorizer"
        )
        self._apply_claim(voucherClaims[i], channel_ids[i], domain)


@external
@nonreentrant
def settle(receiver: address, token: address):
    """
    @notice Transfers everything claimed for (`receiver`, `token`) and not yet
            settled to `receiver`; anyone may call, a call with nothing to
            settle does nothing.
    """
    totals: ReceiverState = self._load_receiver(receiver, token)
    amount: uint128 = totals.totalClaimed - totals.totalSettled
    if amount == 0:
        return
    self._store_receiver(
        receiver,
        token,
        ReceiverState(totalClaimed=totals.totalClaimed, totalSettled=totals.totalClaimed),
    )
    self._safe_transfer(token, receiver, amount)
    log Settled(receiver=receiver, token=token, sender=msg.sender, amount=amount)


# ---------------------------------------------------------------------------
# Timed withdrawal (the payer's way out without the receiver's consent)
# ---------------------------------------------------------------------------


@external
@nonreentrant
def initiateWithdraw(config: ChannelConfig, amount: uint128):
    """
    @notice Starts the withdraw delay for `amount` of unclaimed escrow; the
            payer or its authorizer may call, once at a time per channel.
    """
    assert msg.sender == config.payer or msg.sender == config.payerAuthorizer, (
        "InvalidChannel"
    )
    assert amount != 0, "NothingToWithdraw"
    channel_id: bytes32 = self._channel_id(config, self._domain_separator())
    assert self._load_withdrawal(channel_id).initiatedAt == 0, "WithdrawalAlreadyPending"
    state: ChannelState = self._load_channel(channel_id)
    assert amount <= state.balance - state.totalClaimed, "WithdrawAmountExceedsAvailable"

    started: uint40 = convert(block.timestamp, uint40)
    self._store_withdrawal(channel_id, WithdrawalState(amount=amount, initiatedAt=started))
    log WithdrawInitiated(
        channelId=channel_id, amount=amount, finalizeAfter=started + config.withdrawDelay
    )


@external
@nonreentrant
def finalizeWithdraw(config: ChannelConfig):
    """
    @notice After the delay, pays the pending withdrawal to the payer, cut
            down to what is still unclaimed: claims recorded during the delay
            take precedence.
    """
    assert msg.sender == config.payer or msg.sender == config.payerAuthorizer, (
        "NotAuthorizedToFinalizeWithdraw"
    )
    channel_id: bytes32 = self._channel_id(config, self._domain_separator())
    pending: WithdrawalState = self._load_withdrawal(channel_id)
    assert pending.initiatedAt != 0, "WithdrawalNotPending"
    assert block.timestamp >= convert(pending.initiatedAt, uint256) + convert(
        config.withdrawDelay, uint256
    ), "WithdrawDelayNotElapsed"

    state: ChannelState = self._load_channel(channel_id)
    amount: uint128 = min(pending.amount, state.balance - state.totalClaimed)
    self._store_withdrawal(channel_id, empty(WithdrawalState))
    new_balance: uint128 = state.balance - amount
    self._store_channel(
        channel_id, ChannelState(balance=new_balance, totalClaimed=state.totalClaimed)
    )

    log WithdrawFinalized(channelId=channel_id, sender=msg.sender, amount=amount)
    if new_balance == 0 and state.totalClaimed == 0:
        log ChannelClosed(channelId=channel_id, config=config)
    if amount != 0:
        self._safe_transfer(config.token, config.payer, amount)


# ---------------------------------------------------------------------------
# Cooperative refunds (the receiver side returns unclaimed escrow at once)
# ---------------------------------------------------------------------------


@external
@nonreentrant
def refund(config: ChannelConfig, amount: uint128):
    """
    @notice Returns up to `amount` of unclaimed escrow to the payer; the
            receiver or the receiver authorizer may call.
    """
    assert (
        msg.sender == config.receiver or msg.sender == config.receiverAuthorizer
    ), "NotAuthorizedToRefund"
    self._execute_refund(config, self._channel_id(config, self._domain_separator()), amount)


@external
@nonreentrant
def refundWithSignature(
    config: ChannelConfig,
    amount: uint128,
    nonce: uint256,
    receiverAuthorizerSignature: Bytes[MAX_AUTHORIZER_SIGNATURE_LENGTH],
):
    """
    @notice Like `refund`, on the strength of the receiver authorizer's
            EIP-712 Refund signature for the channel's current refund nonce;
            anyone may submit.
    """
    domain: bytes32 = self._domain_separator()
    channel_id: bytes32 = self._channel_id(config, domain)
    assert nonce == self.refund_nonce[channel_id], "InvalidRefundNonce"
    digest: bytes32 = self._typed_digest(
        domain, keccak256(abi_encode(REFUND_TYPEHASH, channel_id, nonce, amount))
    )
    assert self._is_valid_signature_now(
        config.receiverAuthorizer, digest, receiverAuthorizerSignature
    ), "InvalidSignature"
    self._execute_refund(config, channel_id, amount)


# ---------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------


@view
@external
def getChannelId(config: ChannelConfig) -> bytes32:
    """
    @notice The channel id of `config`: its EIP-712 hash under this contract's
            domain, so the same config differs across chains and deployments.
    """
    return self._channel_id(config, self._domain_separator())


@view
@external
def channels(channelId: bytes32) -> (uint128, uint128):
    """
    @notice (balance, totalClaimed) of a channel.
    """
    state: ChannelState = self._load_channel(channelId)
    return state.balance, state.totalClaimed


@view
@external
def pendingWithdrawals(channelId: bytes32) -> (uint128, uint40):
    """
    @notice (amount, initiatedAt) of the channel's pending withdrawal; zeros
            when none is pending.
    """
    pending: WithdrawalState = self._load_withdrawal(channelId)
    return pending.amount, pending.initiatedAt


@view
@external
def receivers(receiver: address, token: address) -> (uint128, uint128):
    """
    @notice (totalClaimed, totalSettled) of `receiver` in `token`.
    """
    totals: ReceiverState = self._load_receiver(receiver, token)
    return totals.totalClaimed, totals.totalSettled


@view
@external
def refundNonce(channelId: bytes32) -> uint256:
    return self.refund_nonce[channelId]


@view
@external
def getVoucherDigest(channelId: bytes32, maxClaimableAmount: uint128) -> bytes32:
    return self._voucher_digest(channelId, maxClaimableAmount, self._domain_separator())


@view
@external
def getRefundDigest(channelId: bytes32, nonce: uint256, amount: uint128) -> bytes32:
    return self._typed_digest(
        self._domain_separator(),
        keccak256(abi_encode(REFUND_TYPEHASH, channelId, nonce, amount)),
    )


@view
@external
def getClaimBatchDigest(voucherClaims: DynArray[VoucherClaim, MAX_CLAIMS]) -> bytes32:
    """
    @notice The digest the receiver authorizer signs for `claimWithSignature`.
    @dev Defined for an empty batch too (the claims hash to keccak256("")),
         although both claim functions refuse one.
    """
    domain: bytes32 = self._domain_separator()
    return self._claim_batch_digest(
        voucherClaims, self._channel_ids(voucherClaims, domain), domain
    )


# ---------------------------------------------------------------------------
# Internals: accounting
# ---------------------------------------------------------------------------


@internal
def _apply_claim(row: VoucherClaim, channel_id: bytes32, domain: bytes32):
    state: ChannelState = self._load_channel(channel_id)
    # Cumulative totals: a row at or below what is recorded is already applied.
    if row.totalClaimed <= state.totalClaimed:
        return
    assert row.totalClaimed <= row.voucher.maxClaimableAmount, "ClaimExceedsCeiling"
    assert row.totalClaimed <= state.balance, "ClaimExceedsBalance"

    digest: bytes32 = self._voucher_digest(
        channel_id, row.voucher.maxClaimableAmount, domain
    )
    payer_authorizer: address = row.voucher.channel.payerAuthorizer
    if payer_authorizer != empty(address):
        # A committed voucher key: plain ECDSA, whatever the payer is.
        recovered: address = self._recover(digest, row.signature)
        assert recovered != empty(address) and recovered == payer_authorizer, (
            "InvalidSignature"
        )
    else:
        assert self._is_valid_signature_now(
            row.voucher.channel.payer, digest, row.signature
        ), "InvalidSignature"

    delta: uint128 = row.totalClaimed - state.totalClaimed
    self._store_channel(
        channel_id, ChannelState(balance=state.balance, totalClaimed=row.totalClaimed)
    )
    receiver: address = row.voucher.channel.receiver
    token: address = row.voucher.channel.token
    totals: ReceiverState = self._load_receiver(receiver, token)
    self._store_receiver(
        receiver,
        token,
        ReceiverState(
            totalClaimed=totals.totalClaimed + delta, totalSettled=totals.totalSettled
        ),
    )
    log Claimed(
        channelId=channel_id,
        sender=msg.sender,
        claimAmount=delta,
        newTotalClaimed=row.totalClaimed,
    )


@internal
def _execute_refund(config: ChannelConfig, channel_id: bytes32, amount: uint128):
    assert amount != 0, "ZeroRefund"
    # Advanced before anything else, also when nothing is left to refund: a
    # refund signed for this nonce can be used once only.
    self.refund_nonce[channel_id] = unsafe_add(self.refund_nonce[channel_id], 1)

    state: ChannelState = self._load_channel(channel_id)
    refunded: uint128 = min(amount, state.balance - state.totalClaimed)
    if refunded == 0:
        return
    new_balance: uint128 = state.balance - refunded
    self._store_channel(
        channel_id, ChannelState(balance=new_balance, totalClaimed=state.totalClaimed)
    )

    # A pending withdrawal shrinks by what the refund already returned.
    pending: WithdrawalState = self._load_withdrawal(channel_id)
    if pending.initiatedAt != 0:
        if refunded >= pending.amount:
            self._store_withdrawal(channel_id, empty(WithdrawalState))
        else:
            self._store_withdrawal(
                channel_id,
                WithdrawalState(
                    amount=pending.amount - refunded, initiatedAt=pending.initiatedAt
                ),
            )

    log Refunded(channelId=channel_id, sender=msg.sender, amount=refunded)
    if new_balance == 0 and state.totalClaimed == 0:
        log ChannelClosed(channelId=channel_id, config=config)
    self._safe_transfer(config.token, config.payer, refunded)


@internal
def _safe_transfer(token: address, receiver: address, amount: uint128):
    # Low-level, so a token that returns nothing from transfer still works.
    success: bool = False
    response: Bytes[32] = b""
    success, response = raw_call(
        token,
        abi_encode(
            receiver,
            convert(amount, uint256),
            method_id=method_id("transfer(address,uint256)"),
        ),
        max_outsize=32,
        revert_on_failure=False,
    )
    assert success, "TransferFailed"
    if len(response) == 0:
        assert token.codesize != 0, "TransferFailed"
    else:
        assert len(response) == 32 and convert(response, uint256) == 1, "TransferFailed"


# ---------------------------------------------------------------------------
# Internals: packed storage
# ---------------------------------------------------------------------------

LOW_128_BITS: constant(uint256) = 2**128 - 1


@pure
@internal
def _low(word: uint256) -> uint128:
    return convert(word & LOW_128_BITS, uint128)


@pure
@internal
def _high(word: uint256) -> uint128:
    return convert(word >> 128, uint128)


@pure
@internal
def _pack(low: uint128, high: uint256) -> uint256:
    return convert(low, uint256) | (high << 128)


@view
@internal
def _load_channel(channel_id: bytes32) -> ChannelState:
    word: uint256 = self.channel_words[channel_id]
    return ChannelState(balance=self._low(word), totalClaimed=self._high(word))


@internal
def _store_channel(channel_id: bytes32, state: ChannelState):
    self.channel_words[channel_id] = self._pack(
        state.balance, convert(state.totalClaimed, uint256)
    )


@view
@internal
def _load_withdrawal(channel_id: bytes32) -> WithdrawalState:
    word: uint256 = self.withdrawal_words[channel_id]
    return WithdrawalState(
        amount=self._low(word), initiatedAt=convert(word >> 128, uint40)
    )


@internal
def _store_withdrawal(channel_id: bytes32, pending: WithdrawalState):
    self.withdrawal_words[channel_id] = self._pack(
        pending.amount, convert(pending.initiatedAt, uint256)
    )


@view
@internal
def _load_receiver(receiver: address, token: address) -> ReceiverState:
    word: uint256 = self.receiver_words[receiver][token]
    return ReceiverState(totalClaimed=self._low(word), totalSettled=self._high(word))


@internal
def _store_receiver(receiver: address, token: address, totals: ReceiverState):
    self.receiver_words[receiver][token] = self._pack(
        totals.totalClaimed, convert(totals.totalSettled, uint256)
    )


# ---------------------------------------------------------------------------
# Internals: EIP-712
# ---------------------------------------------------------------------------


@view
@internal
def _domain_separator() -> bytes32:
    return keccak256(
        abi_encode(EIP712_DOMAIN_TYPEHASH, HASHED_NAME, HASHED_VERSION, chain.id, self)
    )


@pure
@internal
def _typed_digest(domain: bytes32, struct_hash: bytes32) -> bytes32:
    return keccak256(concat(b"\x19\x01", domain, struct_hash))


@pure
@internal
def _channel_id(config: ChannelConfig, domain: bytes32) -> bytes32:
    # Every ChannelConfig member is a static type, so its ABI encoding is
    # exactly its EIP-712 encodeData.
    return self._typed_digest(domain, keccak256(abi_encode(CHANNEL_CONFIG_TYPEHASH, config)))


@pure
@internal
def _voucher_digest(
    channel_id: bytes32, max_claimable: uint128, domain: bytes32
) -> bytes32:
    return self._typed_digest(
        domain, keccak256(abi_encode(VOUCHER_TYPEHASH, channel_id, max_claimable))
    )


@pure
@internal
def _channel_ids(
    claims: DynArray[VoucherClaim, MAX_CLAIMS], domain: bytes32
) -> DynArray[bytes32, MAX_CLAIMS]:
    ids: DynArray[bytes32, MAX_CLAIMS] = []
    for row: VoucherClaim in claims:
        ids.append(self._channel_id(row.voucher.channel, domain))
    return ids


@pure
@internal
def _claim_batch_digest(
    claims: DynArray[VoucherClaim, MAX_CLAIMS],
    channel_ids: DynArray[bytes32, MAX_CLAIMS],
    domain: bytes32,
) -> bytes32:
    entry_hashes: DynArray[bytes32, MAX_CLAIMS] = []
    for i: uint256 in range(len(claims), bound=MAX_CLAIMS):
        entry_hashes.append(
            keccak256(
                abi_encode(
                    CLAIM_ENTRY_TYPEHASH,
                    channel_ids[i],
                    claims[i].voucher.maxClaimableAmount,
                    claims[i].totalClaimed,
                )
            )
        )
    # EIP-712 hashes an array as keccak256 of its members' hashes laid end to
    # end: the ABI encoding of a bytes32[] minus its offset and length words.
    encoded: Bytes[32 * MAX_CLAIMS + 64] = abi_encode(entry_hashes)
    claims_hash: bytes32 = keccak256(slice(encoded, 64, len(encoded) - 64))
    return self._typed_digest(domain, keccak256(abi_encode(CLAIM_BATCH_TYPEHASH, claims_hash)))


# ---------------------------------------------------------------------------
# Internals: signatures
# ---------------------------------------------------------------------------


@pure
@internal
def _recover(digest: bytes32, signature: Bytes[MAX_AUTHORIZER_SIGNATURE_LENGTH]) -> address:
    """
    @dev The signer of a canonical 65-byte (r, s, v) signature; the zero
         address for anything else, which never equals a real signer.
    """
    if len(signature) != 65:
        return empty(address)
    r: bytes32 = extract32(signature, 0)
    s: bytes32 = extract32(signature, 32)
    v: uint8 = convert(slice(signature, 64, 1), uint8)
    if v != 27 and v != 28:
        return empty(address)
    if convert(s, uint256) > SECP256K1N_HALF:
        return empty(address)
    return ecrecover(digest, v, r, s)


@view
@internal
def _is_valid_signature_now(
    signer: address, digest: bytes32, signature: Bytes[MAX_AUTHORIZER_SIGNATURE_LENGTH]
) -> bool:
    """
    @dev An account without code signs with its key (ECDSA); a contract
         account vouches for the digest itself (EIP-1271). The choice follows
         the code, never both, as the SDK's facilitator checks it off chain.
    """
    if signer.codesize == 0:
        recovered: address = self._recover(digest, signature)
        return recovered != empty(address) and recovered == signer
    success: bool = False
    response: Bytes[32] = b""
    success, response = raw_call(
        signer,
        abi_encode(digest, signature, method_id=method_id("isValidSignature(bytes32,bytes)")),
        max_outsize=32,
        is_static_call=True,
        revert_on_failure=False,
    )
    return success and len(response) == 32 and extract32(response, 0) == EIP1271_MAGIC_VALUE
