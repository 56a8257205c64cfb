#pragma version ~=0.4.3
"""
@title x402 `upto` Permit2 proxy for local development chains
@notice Same ABI and checks as x402UptoPermit2Proxy: the payer signs a Permit2
        PermitWitnessTransferFrom naming this contract as spender, with a
        witness that pins the payee and the one facilitator allowed to settle.
        The facilitator then settles any amount up to the signed maximum.
@dev The runtime code is installed with `anvil_setCode` at
     0x4020A4f3b7b90ccA423B9fabCc0CE57C6C240002, so there is no constructor
     and no storage: Permit2's address is a compile-time constant and the
     reentrancy lock lives in transient storage (EVM >= cancun).
     Revert strings equal the original custom error names because the x402
     facilitator classifies settle failures by substring ("InvalidAmount",
     "UnauthorizedFacilitator", ...).
"""

PERMIT2: public(constant(address)) = 0x000000000022D473030F116dDEE9F6B43aC78BA3

# Must match Permit2.vy's bounds: arguments are forwarded unchanged.
MAX_SIGNATURE_LENGTH: constant(uint256) = 2048
MAX_WITNESS_TYPE_STRING_LENGTH: constant(uint256) = 512

# Completes Permit2's "PermitWitnessTransferFrom(...,uint256 deadline," stub;
# referenced structs follow in alphabetical order as EIP-712 requires.
WITNESS_TYPE_STRING: public(constant(String[120])) = (
    "Witness witness)TokenPermissions(address token,uint256 amount)Witness(address to,address facilitator,uint256 validAfter)"
)
WITNESS_TYPEHASH: public(constant(bytes32)) = keccak256(
    "Witness(address to,address facilitator,uint256 validAfter)"
)


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


struct Witness:
    to: address
    facilitator: address
    validAfter: uint256


struct EIP2612Permit:
    value: uint256
    deadline: uint256
    r: bytes32
    s: bytes32
    v: uint8


interface ISignatureTransfer:
    def permitWitnessTransferFrom(
        permit: PermitTransferFrom,
        transferDetails: SignatureTransferDetails,
        owner: address,
        witness: bytes32,
        witnessTypeString: String[MAX_WITNESS_TYPE_STRING_LENGTH],
        signature: Bytes[MAX_SIGNATURE_LENGTH],
    ): nonpayable


event Settled:
    pass


event SettledWithPermit:
    pass


@external
@nonreentrant
def settle(
    permit: PermitTransferFrom,
    amount: uint256,
    owner: address,
    witness: Witness,
    signature: Bytes[MAX_SIGNATURE_LENGTH],
):
    """
    @notice Transfers `amount` (at most the signed maximum) from `owner` to
            `witness.to`; callable only by `witness.facilitator`.
    """
    self._settle(permit, amount, owner, witness, signature)
    log Settled()


@external
@nonreentrant
def settleWithPermit(
    permit2612: EIP2612Permit,
    permit: PermitTransferFrom,
    amount: uint256,
    owner: address,
    witness: Witness,
    signature: Bytes[MAX_SIGNATURE_LENGTH],
):
    """
    @notice Like `settle`, but first submits the payer's EIP-2612 permit that
            approves Permit2, so a payer without a prior approval pays no gas.
    """
    assert permit2612.value == permit.permitted.amount, "Permit2612AmountMismatch"
    # The permit's failure is deliberately ignored: it also fails when someone
    # front-ran it (nonce consumed) although the approval it grants is in
    # place. If the allowance really is missing, Permit2's transferFrom fails.
    # (Vyper requires the success flag to be assigned; it is unused on purpose.)
    permit_ok: bool = raw_call(
        permit.permitted.token,
        abi_encode(
            owner,
            PERMIT2,
            permit2612.value,
            permit2612.deadline,
            permit2612.v,
            permit2612.r,
            permit2612.s,
            method_id=method_id(
                "permit(address,address,uint256,uint256,uint8,bytes32,bytes32)"
            ),
        ),
        revert_on_failure=False,
    )
    self._settle(permit, amount, owner, witness, signature)
    log SettledWithPermit()


@internal
def _settle(
    permit: PermitTransferFrom,
    amount: uint256,
    owner: address,
    witness: Witness,
    signature: Bytes[MAX_SIGNATURE_LENGTH],
):
    assert amount != 0, "InvalidAmount"
    assert amount <= permit.permitted.amount, "AmountExceedsPermitted"
    # The witness is signed by the payer, so only the facilitator the payer
    # chose can decide the final amount.
    assert msg.sender == witness.facilitator, "UnauthorizedFacilitator"
    assert owner != empty(address), "InvalidOwner"
    assert witness.to != empty(address), "InvalidDestination"
    assert block.timestamp >= witness.validAfter, "PaymentTooEarly"

    witness_hash: bytes32 = keccak256(
        abi_encode(
            WITNESS_TYPEHASH, witness.to, witness.facilitator, witness.validAfter
        )
    )
    # The destination comes from the signed witness, never from the caller,
    # so a facilitator cannot redirect funds. Permit2 bubbles up its revert
    # reasons ("InvalidNonce", "SignatureExpired", ...) unchanged.
    extcall ISignatureTransfer(PERMIT2).permitWitnessTransferFrom(
        permit,
        SignatureTransferDetails(to=witness.to, requestedAmount=amount),
        owner,
        witness_hash,
        WITNESS_TYPE_STRING,
        signature,
    )
