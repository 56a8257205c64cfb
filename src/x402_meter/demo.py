"""``x402-meter demo``: one paid request, end to end, on the local stack.

Shows the money path of an ``upto`` payment with real parts: the official SDK client signs
a Permit2 authorization for the most the request may cost, the facilitator verifies it over
HTTP, and afterwards settles only what was used, on chain.
"""

from __future__ import annotations

import asyncio
import sys
import time
from decimal import Decimal

from eth_account import Account
from x402 import x402Client
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import PaymentRequired, PaymentRequirements

from x402_meter.devstack import LocalStack, local_stack, token_balance

PRICE_PER_TOKEN_ATOMIC = 2  # 0.000002 USDC per token
MAX_TOKENS = 4096
USED_TOKENS = 173


def _usdc(stack: LocalStack, atomic: int) -> str:
    return f"{Decimal(atomic).scaleb(-stack.asset_decimals):f} USDC"


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


async def _pay_once(stack: LocalStack) -> int:
    facilitator = HTTPFacilitatorClient(FacilitatorConfig(url=stack.facilitator_url, timeout=30))
    supported = facilitator.get_supported()
    upto_extra = next(kind.extra for kind in supported.kinds if kind.scheme == "upto") or {}
    maximum = MAX_TOKENS * PRICE_PER_TOKEN_ATOMIC
    requirements = PaymentRequirements(
        scheme="upto",
        network=stack.network,
        asset=stack.asset,
        amount=str(maximum),
        pay_to=stack.pay_to,
        max_timeout_seconds=300,
        extra={"name": stack.asset_name, "version": stack.asset_version, **upto_extra},
    )
    _step(f"402 Payment Required: up to {MAX_TOKENS} tokens = {_usdc(stack, maximum)}")

    payer = Account.from_key(stack.payer_private_keys[0])
    client = x402Client().register(stack.network, UptoEvmClientScheme(payer))
    client.set_spend_controls(
        {"allowed_assets": [{"network": stack.network, "asset": stack.asset}]}
    )
    payload = await client.create_payment_payload(PaymentRequired(accepts=[requirements]))
    _step(f"payer {payer.address} signed a Permit2 authorization (EIP-712)")

    verified = await facilitator.verify(payload, requirements)
    if not verified.is_valid:
        print(f"verify failed: {verified.invalid_reason}", file=sys.stderr)
        return 1
    _step("facilitator verified the payment")

    charge = USED_TOKENS * PRICE_PER_TOKEN_ATOMIC
    _step(f"the answer used {USED_TOKENS} tokens: charging {_usdc(stack, charge)}")
    started = time.perf_counter()
    settled = await facilitator.settle(
        payload, requirements.model_copy(update={"amount": str(charge)})
    )
    if not settled.success:
        print(f"settle failed: {settled.error_reason}", file=sys.stderr)
        return 1
    elapsed_ms = (time.perf_counter() - started) * 1000
    _step(f"settled on chain in {elapsed_ms:.0f} ms: transaction {settled.transaction}")
    return 0


def run_demo() -> int:
    _step("starting the local stack (anvil, test USDC, Permit2, upto proxy, facilitator)")
    with local_stack() as stack:
        w3 = stack.web3()
        payer = Account.from_key(stack.payer_private_keys[0]).address
        before = (
            token_balance(w3, stack.asset, payer),
            token_balance(w3, stack.asset, stack.pay_to),
        )
        status = asyncio.run(_pay_once(stack))
        after = (
            token_balance(w3, stack.asset, payer),
            token_balance(w3, stack.asset, stack.pay_to),
        )
        for who, was, now in (("payer", before[0], after[0]), ("seller", before[1], after[1])):
            print(f"    {who:6} {_usdc(stack, was)} -> {_usdc(stack, now)}")
    _step("stopped the local stack" + (": demo complete" if status == 0 else ""))
    return status
