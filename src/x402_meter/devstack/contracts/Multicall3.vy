#pragma version ~=0.4.3
"""
@title Multicall3 `tryAggregate` for local development chains
@notice Only the entry point the x402 facilitator uses (through `eth_call`)
        to batch reads and to simulate e.g. a wallet deployment followed by a
        transfer, with the ABI of the canonical Multicall3.
@dev The runtime code is installed with `anvil_setCode` at the canonical
     address 0xcA11bde05977b3631167028862bE2a173976CA11; there is no
     constructor and no storage.
"""

# Vyper needs static bounds for dynamic arguments: up to MAX_CALLS calls of at
# most MAX_DATA bytes of calldata each. Return data longer than MAX_DATA is
# truncated to MAX_DATA bytes. The SDK batches at most a handful of short
# calls (balanceOf, name, version, authorizationState, a factory deployment),
# far below both bounds.
MAX_CALLS: constant(uint256) = 16
MAX_DATA: constant(uint256) = 2048


struct Call:
    target: address
    callData: Bytes[MAX_DATA]


struct Result:
    success: bool
    returnData: Bytes[MAX_DATA]


@external
@payable
def tryAggregate(
    requireSuccess: bool, calls: DynArray[Call, MAX_CALLS]
) -> DynArray[Result, MAX_CALLS]:
    """
    @notice Executes `calls` in order and returns each call's success flag and
            return data; reverts on the first failure if `requireSuccess`.
    @dev Payable like the original; the value is not forwarded to the calls.
    """
    results: DynArray[Result, MAX_CALLS] = []
    for c: Call in calls:
        success: bool = False
        data: Bytes[MAX_DATA] = b""
        success, data = raw_call(
            c.target, c.callData, max_outsize=MAX_DATA, revert_on_failure=False
        )
        if requireSuccess:
            assert success, "Multicall3: call failed"
        results.append(Result(success=success, returnData=data))
    return results
