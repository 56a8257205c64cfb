#pragma version ~=0.4.3
"""
@title Permit2 deposit collector for x402 batch-settlement channels
@notice Pulls a channel deposit from the payer straight into the settlement
        contract through Permit2's `permitWitnessTransferFrom`; the payer's
        signature names this collector as spender and carries the channel id
        as its witness, so it funds exactly that channel.
@dev The runtime code is installed with `anvil_setCode` at
     0x4020425FAf3B746C082C2f942b4E5159887B0005; with no constructor, the
     settlement contract and Permit2 are compile-time constants.
     Only the settlement contract may call `collect` (see
     ERC3009DepositCollector.vy for why).
     `collectorData` is abi.encode(uint256 nonce, uint256 deadline,
     bytes permit2Signature, bytes eip2612Permit). A non-empty
     `eip2612Permit` is abi.encode(uint256 value, uint256 deadline, uint8 v,
     bytes32 r, bytes32 s): the payer's EIP-2612 approval of Permit2, submitted
     first so a payer without an approval pays no gas. Its failure is only
     logged: it also fails when someone front-ran it and the approval is in
     place already; a really missing allowance fails the Permit2 transfer.
"""

x402BatchSettlement: public(constant(address)) = 0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003
PERMIT2: public(constant(address)) = 0x000000000022D473030F116dDEE9F6B43aC78BA3

# Completes Permit2's "PermitWitnessTransferFrom(...,uint256 deadline," stub;
# the referenced structs follow in alphabetical order, as EIP-712 requires.
DEPOSIT_WITNESS_TYPE_STRING: public(constant(String[102])) = (
    "DepositWitness witness)DepositWitness(bytes32 channelId)TokenPermissions(address token,uint256 amount)"
)
DEPOSIT_WITNESS_TYPEHASH: public(constant(bytes32)) = keccak256(
    "DepositWitness(bytes32 channelId)"
)

# Must not exceed BatchSettlement.vy's bound on `collectorData`; Permit2.vy
# takes signatures of up to 2048 bytes and witness type strings of up to 512.
MAX_COLLECTOR_DATA_LENGTH: constant(uint256) = 2048
MAX_SIGNATURE_LENGTH: constant(uint256) = 1024
EIP2612_PERMIT_LENGTH: constant(uint256) = 160
MAX_PERMIT2_SIGNATURE_LENGTH: constant(uint256) = 2048
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


interface ISignatureTransfer:
    def permitWitnessTransferFrom(
        permit: PermitTransferFrom,
        transferDetails: SignatureTransferDetails,
        owner: address,
        witness: bytes32,
        witnessTypeString: String[MAX_WITNESS_TYPE_STRING_LENGTH],
        signature: Bytes[MAX_PERMIT2_SIGNATURE_LENGTH],
    ): nonpayable


event EIP2612PermitFailed:
    token: indexed(address)
    owner: indexed(address)


@external
def collect(
    payer: address,
    token: address,
    amount: uint256,
    channelId: bytes32,
    collectorData: Bytes[MAX_COLLECTOR_DATA_LENGTH],
):
    """
    @notice Moves `amount` of `token` from `payer` to the settlement contract
            under the payer's Permit2 signature in `collectorData`.
    """
    assert msg.sender == x402BatchSettlement, "OnlyX402BatchSettlement"
    nonce: uint256 = 0
    deadline: uint256 = 0
    signature: Bytes[MAX_SIGNATURE_LENGTH] = b""
    eip2612_permit: Bytes[EIP2612_PERMIT_LENGTH] = b""
    nonce, deadline, signature, eip2612_permit = abi_decode(
        collectorData,
        (uint256, uint256, Bytes[MAX_SIGNATURE_LENGTH], Bytes[EIP2612_PERMIT_LENGTH]),
    )
    if len(eip2612_permit) != 0:
        self._try_eip2612_permit(payer, token, amount, eip2612_permit)

    extcall ISignatureTransfer(PERMIT2).permitWitnessTransferFrom(
        PermitTransferFrom(
            permitted=TokenPermissions(token=token, amount=amount),
            nonce=nonce,
            deadline=deadline,
        ),
        SignatureTransferDetails(to=x402BatchSettlement, requestedAmount=amount),
        payer,
        keccak256(abi_encode(DEPOSIT_WITNESS_TYPEHASH, channelId)),
        DEPOSIT_WITNESS_TYPE_STRING,
        signature,
    )


@internal
def _try_eip2612_permit(
    payer: address, token: address, amount: uint256, permit: Bytes[EIP2612_PERMIT_LENGTH]
):
    value: uint256 = 0
    permit_deadline: uint256 = 0
    v: uint8 = 0
    r: bytes32 = empty(bytes32)
    s: bytes32 = empty(bytes32)
    value, permit_deadline, v, r, s = abi_decode(
        permit, (uint256, uint256, uint8, bytes32, bytes32)
    )
    assert value == amount, "Permit2612AmountMismatch"
    approved: bool = raw_call(
        token,
        abi_encode(
            payer,
            PERMIT2,
            value,
            permit_deadline,
            v,
            r,
            s,
            method_id=method_id("permit(address,address,uint256,uint256,uint8,bytes32,bytes32)"),
        ),
        revert_on_failure=False,
    )
    if not approved:
        log EIP2612PermitFailed(token=token, owner=payer)
