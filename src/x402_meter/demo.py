"""``x402-meter demo``: a short paid conversation, end to end, on the local stack.

Every part is real: anvil runs the chain, the demo app (``x402_meter.devstack.demo_app``)
serves an OpenAI-compatible chat behind ``X402Meter`` in uvicorn, the official ``openai``
package asks the questions through x402-meter's paying client (the x402 SDK signs), the local
facilitator verifies over HTTP, and each answer's actual cost is settled on chain after its
stream closes. Each step is printed as it happens.

Everything it runs ships in the wheel: ``pip install 'x402-meter[demo]'`` and anvil (found as
``x402_meter.devstack.anvil.find_anvil`` says) are all it needs.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from contextlib import ExitStack
from decimal import Decimal
from typing import Any, Final

import anyio

from x402_meter.assets import Asset
from x402_meter.client import PayingAsyncClient, Payment, PaymentStage, Receipt
from x402_meter.devstack import LocalStack, local_stack, token_balance
from x402_meter.devstack.anvil import AnvilNotFoundError
from x402_meter.devstack.demo_app import MAX_TOKENS, MODEL, PRICE, create_demo_app
from x402_meter.store import open_store

QUESTIONS: Final = (
    "What is x402, in two sentences?",
    "And how is this answer paid for?",
)
MAX_PER_REQUEST: Final = "0.01"  # USDC: the paying client refuses to authorize more at once
MAX_TOTAL: Final = "0.05"  # USDC: ... or to spend more in all


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _short(address: str) -> str:
    return f"{address[:6]}...{address[-4:]}"


class _Narrator:
    """Prints each step of each payment as the paying client reports it."""

    def __init__(self, stack: LocalStack, price_per_token: str, max_tokens: int) -> None:
        self.decimals = stack.asset_decimals
        self.price_per_token = price_per_token
        self.max_tokens = max_tokens

    def usdc(self, atomic: int) -> str:
        return f"{Decimal(atomic).scaleb(-self.decimals):f} USDC"

    def __call__(self, stage: PaymentStage, payment: Payment) -> None:
        if stage == "required":
            _step(
                f"402 Payment Required: '{payment.scheme}' up to {self.usdc(payment.max_amount)}"
                f" (the prompt and {self.max_tokens} tokens at {self.price_per_token} USDC)"
            )
        elif stage == "signed":
            what = (
                "a Permit2 authorization (EIP-712)"
                if payment.scheme == "upto"
                else "an EIP-3009 transfer authorization (EIP-712)"
            )
            _step(f"payer {_short(payment.payer)} signs {what} and retries")
        elif stage == "answered":
            if payment.status_code == 200:
                _step("200: verified by the facilitator; the answer streams:")
            else:
                _step(f"{payment.status_code}: the server did not accept the payment")


async def _converse(stack: LocalStack, store_url: str) -> list[Receipt]:
    """Serve the example, hold the conversation, return each answer's receipt."""
    import openai  # the demo extra, checked by run_demo before the stack starts

    from x402_meter.devstack.asgi_server import serving

    asset = Asset(stack.asset, stack.asset_name, stack.asset_version, stack.asset_decimals)
    app = create_demo_app(
        pay_to=stack.pay_to,
        network=stack.network,
        facilitator_url=stack.facilitator_url,
        facilitator_api_key=stack.facilitator_api_key,
        asset=asset,
        store=open_store(store_url),
    )
    narrator = _Narrator(stack, PRICE, MAX_TOKENS)
    receipts: list[Receipt] = []
    async with serving(app) as base:
        _step(f"the demo app (x402_meter.devstack.demo_app) serves {base}/v1/chat/completions")
        _step(
            f"the paying client: public anvil dev key {_short(_payer(stack))},"
            f" at most {MAX_PER_REQUEST} USDC per request and {MAX_TOTAL} USDC in all"
        )
        async with PayingAsyncClient(
            stack.payer_private_keys[0],
            network=stack.network,
            asset=asset,
            max_per_request=MAX_PER_REQUEST,
            max_total=MAX_TOTAL,
            rpc_url=stack.rpc_url,  # max_total counts what the chain proves, not receipts
            on_payment=narrator,
        ) as http:
            llm = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x402", http_client=http)
            messages: list[Any] = []
            for turn, question in enumerate(QUESTIONS, 1):
                print(f"\n--- turn {turn}: {question}", flush=True)
                messages.append({"role": "user", "content": question})
                _step(f"openai: chat.completions.create(model={MODEL!r}, stream=True)")
                stream = await llm.chat.completions.create(
                    model=MODEL, messages=messages, stream=True
                )
                print("    ", end="", flush=True)
                answer: list[str] = []
                async for chunk in stream:
                    for choice in chunk.choices:
                        text = choice.delta.content or ""
                        answer.append(text)
                        print(text, end="", flush=True)
                print(flush=True)
                messages.append({"role": "assistant", "content": "".join(answer)})
                payment = http.last_payment
                assert payment is not None
                _step(f"the stream closed; the receipt: {payment.receipt_url}")
                receipt = await http.receipt(wait=30)
                receipts.append(receipt)
                if receipt.status != "settled":
                    print(f"settlement did not complete: {receipt.raw}", file=sys.stderr)
                    return receipts
                tokens = (receipt.input_tokens or 0) + (receipt.output_tokens or 0)
                _step(
                    f"charged {narrator.usdc(receipt.amount or 0)} for {tokens} tokens"
                    f" ({receipt.input_tokens} in, {receipt.output_tokens} out,"
                    f" {receipt.usage_source})"
                )
                _step(f"settled on chain: transaction {receipt.transaction}")
    return receipts


def _payer(stack: LocalStack) -> str:
    from eth_account import Account

    return str(Account.from_key(stack.payer_private_keys[0]).address)


def _missing_extra() -> str | None:
    """What the demo needs but this environment lacks, said as the fix; None: nothing."""
    missing = [name for name in ("openai", "uvicorn") if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (
        f"the demo needs {' and '.join(missing)}: pip install 'x402-meter[demo]'"
        " (or make demo from a checkout)"
    )


def run_demo() -> int:
    missing = _missing_extra()
    if missing is not None:  # checked before anything starts, not halfway through
        print(f"error: {missing}", file=sys.stderr)
        return 2
    _step("starting the local stack (anvil, test USDC, Permit2, upto proxy, facilitator)")
    with ExitStack() as running:
        try:
            stack = running.enter_context(local_stack())
        except AnvilNotFoundError as exc:  # its message says how to install anvil
            print(f"error: {exc}", file=sys.stderr)
            return 2
        scratch = running.enter_context(tempfile.TemporaryDirectory(prefix="x402-demo-"))
        store_url = f"sqlite:///{scratch}/ledger.sqlite3"
        _step(f"payments are recorded in {store_url}")
        w3 = stack.web3()
        accounts = (("payer", _payer(stack)), ("seller", stack.pay_to))
        before = {who: token_balance(w3, stack.asset, address) for who, address in accounts}
        receipts = anyio.run(_converse, stack, store_url)
        settled = [r for r in receipts if r.status == "settled"]
        status = 0 if len(settled) == len(QUESTIONS) else 1
        print(flush=True)
        _step("balances on chain, before -> after:")
        usdc = _Narrator(stack, "", 0).usdc
        after = {who: token_balance(w3, stack.asset, address) for who, address in accounts}
        for who, address in accounts:
            print(
                f"    {who:6} {_short(address)} {usdc(before[who])} -> {usdc(after[who])}",
                flush=True,
            )
        paid = sum(r.amount or 0 for r in settled)
        if after["seller"] - before["seller"] == paid == before["payer"] - after["payer"]:
            _step(f"the seller received exactly the sum of the receipts: {usdc(paid)}")
        elif status == 0:
            print("the balances did not move by the receipts' amounts", file=sys.stderr)
            status = 1
    _step("stopped the demo app and the local stack" + (": demo complete" if status == 0 else ""))
    return status
