"""`exact` (EIP-3009) payments through the local facilitator, for flat-priced routes."""

from __future__ import annotations

import pytest
from eth_account import Account

from tests.sdk_payer import facilitator_client, requirements, sign
from x402_meter.devstack import LocalStack, token_balance

pytestmark = pytest.mark.anyio

PRICE = 10_000  # 0.01 test USDC


async def test_exact_payment_verifies_and_settles_the_full_price(
    x402_local_stack: LocalStack,
) -> None:
    stack = x402_local_stack
    key = stack.payer_private_keys[2]
    payer = Account.from_key(key).address
    accepted = requirements(stack, "exact", PRICE)
    payload = await sign(stack, key, accepted)
    client = facilitator_client(stack)
    w3 = stack.web3()
    payer_before = token_balance(w3, stack.asset, payer)
    seller_before = token_balance(w3, stack.asset, stack.pay_to)

    verified = await client.verify(payload, accepted)
    settled = await client.settle(payload, accepted)

    assert verified.is_valid, verified.invalid_reason
    assert settled.success, settled.error_reason
    assert token_balance(w3, stack.asset, payer) == payer_before - PRICE
    assert token_balance(w3, stack.asset, stack.pay_to) == seller_before + PRICE


async def test_an_exact_authorization_settles_once(x402_local_stack: LocalStack) -> None:
    stack = x402_local_stack
    accepted = requirements(stack, "exact", PRICE)
    payload = await sign(stack, stack.payer_private_keys[2], accepted)
    client = facilitator_client(stack)
    assert (await client.settle(payload, accepted)).success

    second = await client.settle(payload, accepted)

    assert not second.success
    assert second.error_reason == "invalid_exact_evm_nonce_already_used"
