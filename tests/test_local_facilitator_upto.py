"""The local facilitator verifies and settles `upto` payments made by the official SDK client.

Everything is real: EIP-712 signatures from the SDK, HTTP to the facilitator process, and
settlement transactions on the anvil chain, checked by reading token balances.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from x402.schemas import PaymentPayload

from tests.sdk_payer import facilitator_client, requirements, sign
from x402_meter.devstack import LocalStack, token_balance
from x402_meter.devstack.accounts import dev_account

pytestmark = pytest.mark.anyio

MAX = 5_000  # 0.005 test USDC authorized


def payer_key(stack: LocalStack, index: int) -> str:
    return stack.payer_private_keys[index]


def balances(stack: LocalStack, payer: str) -> tuple[int, int]:
    w3 = stack.web3()
    return token_balance(w3, stack.asset, payer), token_balance(w3, stack.asset, stack.pay_to)


async def signed_upto(stack: LocalStack, key_index: int = 0, **kwargs: int) -> PaymentPayload:
    accepted = requirements(stack, "upto", MAX, **kwargs)  # type: ignore[arg-type]
    return await sign(stack, payer_key(stack, key_index), accepted)


async def test_upto_payload_verifies_for_its_maximum(x402_local_stack: LocalStack) -> None:
    stack = x402_local_stack
    payload = await signed_upto(stack)
    result = await facilitator_client(stack).verify(payload, requirements(stack, "upto", MAX))
    assert result.is_valid, result.invalid_reason
    assert result.payer == Account.from_key(payer_key(stack, 0)).address


async def test_settling_less_than_the_maximum_moves_exactly_that_amount(
    x402_local_stack: LocalStack,
) -> None:
    stack = x402_local_stack
    payer = Account.from_key(payer_key(stack, 0)).address
    payload = await signed_upto(stack)
    before = balances(stack, payer)

    result = await facilitator_client(stack).settle(payload, requirements(stack, "upto", 1_234))

    assert result.success, result.error_reason
    assert result.transaction.startswith("0x")
    after = balances(stack, payer)
    assert after == (before[0] - 1_234, before[1] + 1_234)


async def test_settling_zero_sends_no_transaction(x402_local_stack: LocalStack) -> None:
    stack = x402_local_stack
    payer = Account.from_key(payer_key(stack, 0)).address
    payload = await signed_upto(stack)
    block_before = stack.web3().eth.block_number
    before = balances(stack, payer)

    result = await facilitator_client(stack).settle(payload, requirements(stack, "upto", 0))

    assert result.success
    assert result.transaction == ""
    assert stack.web3().eth.block_number == block_before
    assert balances(stack, payer) == before


async def test_settling_more_than_the_maximum_is_refused(x402_local_stack: LocalStack) -> None:
    stack = x402_local_stack
    payer = Account.from_key(payer_key(stack, 0)).address
    payload = await signed_upto(stack)
    before = balances(stack, payer)

    result = await facilitator_client(stack).settle(payload, requirements(stack, "upto", MAX + 1))

    assert not result.success
    assert result.error_reason == "invalid_upto_evm_payload_settlement_exceeds_amount"
    assert balances(stack, payer) == before


async def test_a_payment_to_someone_else_is_refused(x402_local_stack: LocalStack) -> None:
    stack = x402_local_stack
    payload = await signed_upto(stack)
    elsewhere = requirements(stack, "upto", MAX, pay_to=dev_account(9).address)

    result = await facilitator_client(stack).verify(payload, elsewhere)

    assert not result.is_valid
    assert result.invalid_reason == "invalid_permit2_recipient_mismatch"


async def test_a_deadline_inside_the_safety_margin_is_refused_as_expired(
    x402_local_stack: LocalStack,
) -> None:
    stack = x402_local_stack
    # Facilitators refuse deadlines closer than 6 s: a 1 s window is already expired.
    payload = await signed_upto(stack, max_timeout_seconds=1)

    result = await facilitator_client(stack).verify(payload, requirements(stack, "upto", MAX))

    assert not result.is_valid
    assert result.invalid_reason == "permit2_deadline_expired"


async def test_a_tampered_signature_is_refused(x402_local_stack: LocalStack) -> None:
    stack = x402_local_stack
    payload = await signed_upto(stack)
    signature = payload.payload["signature"]
    flipped = signature[:10] + ("0" if signature[10] != "0" else "1") + signature[11:]
    tampered = payload.model_copy(update={"payload": {**payload.payload, "signature": flipped}})

    result = await facilitator_client(stack).verify(tampered, requirements(stack, "upto", MAX))

    assert not result.is_valid
    assert result.invalid_reason == "invalid_permit2_signature"


async def test_a_second_settle_of_the_same_authorization_is_refused(
    x402_local_stack: LocalStack,
) -> None:
    stack = x402_local_stack
    payer = Account.from_key(payer_key(stack, 1)).address
    payload = await signed_upto(stack, key_index=1)
    client = facilitator_client(stack)
    first = await client.settle(payload, requirements(stack, "upto", 100))
    assert first.success, first.error_reason
    after_first = balances(stack, payer)

    second = await client.settle(payload, requirements(stack, "upto", 100))

    assert not second.success
    assert second.error_reason == "invalid_upto_evm_transaction_failed"
    assert balances(stack, payer) == after_first
