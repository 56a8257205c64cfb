#pragma version ~=0.4.3
"""
@title EIP-3009 deposit collector for x402 batch-settlement channels
@notice Pulls a channel deposit from the payer with the payer's signed
        `ReceiveWithAuthorization` (to = this collector) and passes the tokens
        on to the settlement contract, in the settlement contract's `deposit`
        transaction.
@dev The runtime code is installed with `anvil_setCode` at
     0x4020806089470a89826cB9fB1f4059150b550004; with no constructor, the
     settlement contract it serves is a compile-time constant.
     Only that contract may call `collect`: the signed authorization pays
     this collector, and whoever could drive the collector could otherwise
     move a payer's deposit into a channel of their choosing.
     `collectorData` is abi.encode(uint256 validAfter, uint256 validBefore,
     uint256 salt, bytes signature); the authorization nonce is
     keccak256(abi.encode(channelId, salt)), so a signature funds exactly the
     channel it was made for. The signature is one 65-byte (r, s, v) ECDSA
     signature, split here for the token's (v, r, s) `receiveWithAuthorization`
     (which USDC has as well).
"""

x402BatchSettlement: public(constant(address)) = 0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003

# Must not exceed BatchSettlement.vy's bound on `collectorData`.
MAX_COLLECTOR_DATA_LENGTH: constant(uint256) = 2048
MAX_SIGNATURE_LENGTH: constant(uint256) = 1024


interface IERC3009:
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
    ): nonpayable


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
            under the payer's authorization in `collectorData`.
    """
    assert msg.sender == x402BatchSettlement, "OnlyX402BatchSettlement"
    valid_after: uint256 = 0
    valid_before: uint256 = 0
    salt: uint256 = 0
    signature: Bytes[MAX_SIGNATURE_LENGTH] = b""
    valid_after, valid_before, salt, signature = abi_decode(
        collectorData, (uint256, uint256, uint256, Bytes[MAX_SIGNATURE_LENGTH])
    )
    assert len(signature) == 65, "InvalidSignatureLength"

    extcall IERC3009(token).receiveWithAuthorization(
        payer,
        self,
        amount,
        valid_after,
        valid_before,
        keccak256(abi_encode(channelId, salt)),
        convert(slice(signature, 64, 1), uint8),
        extract32(signature, 0),
        extract32(signature, 32),
    )
    self._safe_transfer(token, x402BatchSettlement, amount)


@internal
def _safe_transfer(token: address, receiver: address, amount: uint256):
    success: bool = False
    response: Bytes[32] = b""
    success, response = raw_call(
        token,
        abi_encode(receiver, amount, method_id=method_id("transfer(address,uint256)")),
        max_outsize=32,
        revert_on_failure=False,
    )
    assert success, "TransferFailed"
    if len(response) != 0:
        assert len(response) == 32 and convert(response, uint256) == 1, "TransferFailed"
