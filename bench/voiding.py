"""What a payer that voids its authorization mid-answer still receives, and what re-checks cost.

    .venv/bin/python -m bench.voiding                      # 20 and 200 chunks/s, 5 trials each
    .venv/bin/python -m bench.voiding --recheck-every 5 --trials 3 --rates 20,200

On the local stack (anvil, contracts, the facilitator over HTTP), X402Meter in a real
uvicorn (in this process) serves an endless OpenAI-style stream at a fixed rate. A new payer
pays with an SDK-signed ``upto`` authorization, reads a few chunks, then invalidates its
Permit2 nonce on chain; from the moment the transaction is mined, the seconds and bytes of
answer that still arrive are the figure (the answer's end is the server's decision). The
void is made at a random point of the re-check period, as an attacker cannot see it.
Separately, a stream left running for ``--cost-seconds`` counts the facilitator calls
(``/verify``) X402Meter makes: the re-checks' cost per minute per stream.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import anyio
import anyio.to_thread
import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from x402.http.utils import decode_payment_required_header, encode_payment_signature_header
from x402.mechanisms.evm.constants import PERMIT2_ADDRESS
from x402.schemas import PaymentRequired

from bench.common import Payer, Summary, machine
from x402_meter import Asset, MemoryStore, X402Meter
from x402_meter.devstack import LocalStack, local_stack
from x402_meter.devstack.accounts import DEPLOYER
from x402_meter.devstack.asgi_server import serving
from x402_meter.devstack.contracts_artifacts import load_artifact
from x402_meter.facilitator import FacilitatorClient

FUNDING: Final = 10 * 10**6
CHAT: Final = {"model": "local-stub", "messages": [{"role": "user", "content": "Go on."}]}


def chunk() -> bytes:
    choice = {"index": 0, "delta": {"content": " word"}, "finish_reason": None}
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "choices": [choice]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


CHUNK: Final = chunk()


def endless_app(per_second: int) -> Any:
    """An answer that never ends by itself: ``per_second`` chunks a second."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def until_disconnected() -> None:  # as Starlette's StreamingResponse does
            while (await receive())["type"] != "http.disconnect":
                pass
            tasks.cancel_scope.cancel()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(until_disconnected)
            while True:
                await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
                await anyio.sleep(1 / per_second)

    return app


class CountingFacilitator(FacilitatorClient):
    """The HTTP facilitator client, counting ``/verify`` calls."""

    def __init__(self, url: str, api_key: str) -> None:
        super().__init__(url, api_key=api_key)
        self.verifies = 0

    async def verify(self, payload: Any, requirements: Any) -> Any:
        self.verifies += 1
        return await super().verify(payload, requirements)


def new_payer(stack: LocalStack) -> LocalAccount:
    """A new account with gas, test USDC and a Permit2 approval (anvil impersonation)."""
    w3 = stack.web3()
    account: LocalAccount = Account.create()
    token = w3.eth.contract(
        address=Web3.to_checksum_address(stack.asset), abi=load_artifact("Token")["abi"]
    )
    anvil: Any = w3.provider
    anvil.make_request("anvil_setBalance", [account.address, hex(10**18)])
    anvil.make_request("anvil_impersonateAccount", [account.address])
    for call, sender in (
        (token.functions.mint(account.address, FUNDING), DEPLOYER.address),
        (token.functions.approve(PERMIT2_ADDRESS, 2**256 - 1), account.address),
    ):
        sent = w3.eth.send_transaction(call.build_transaction({"from": sender}))
        w3.eth.wait_for_transaction_receipt(sent)
    anvil.make_request("anvil_stopImpersonatingAccount", [account.address])
    return account


def invalidate(stack: LocalStack, payer: LocalAccount, nonce: int) -> None:
    """The payer voids its authorization: Permit2 ``invalidateUnorderedNonces``, signed by it."""
    w3 = stack.web3()
    permit2 = w3.eth.contract(
        address=Web3.to_checksum_address(PERMIT2_ADDRESS), abi=load_artifact("Permit2")["abi"]
    )
    call = permit2.functions.invalidateUnorderedNonces(nonce >> 8, 1 << (nonce & 255))
    transaction = call.build_transaction(
        {"from": payer.address, "nonce": w3.eth.get_transaction_count(payer.address)}
    )
    signed = payer.sign_transaction(transaction)  # type: ignore[arg-type]
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))


def metered(stack: LocalStack, per_second: int, recheck_every: float) -> X402Meter:
    return X402Meter(
        endless_app(per_second),
        pay_to=stack.pay_to,
        network=stack.network,
        asset=Asset(stack.asset, stack.asset_name, stack.asset_version, stack.asset_decimals),
        price_per_token="0.000001",
        max_tokens=1_000_000,
        routes=["POST /v1/chat/completions"],
        store=MemoryStore(),
        facilitator=CountingFacilitator(stack.facilitator_url, stack.facilitator_api_key),
        recheck_every=recheck_every,
        voided_payer_seconds=0,  # a new payer per trial anyway
    )


async def paid_stream(
    client: httpx.AsyncClient, url: str, stack: LocalStack, payer: LocalAccount
) -> tuple[httpx.Response, int]:
    challenge = await client.post(url, json=CHAT)
    required = decode_payment_required_header(challenge.headers["payment-required"])
    assert isinstance(required, PaymentRequired)
    payload = (await Payer(stack.network, stack.asset, payer.key.hex()).payloads(required, 1))[0]
    nonce = int(payload.payload["permit2Authorization"]["nonce"])
    headers = {"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)}
    request = client.build_request("POST", url, json=CHAT, headers=headers)
    response = await client.send(request, stream=True)
    assert response.status_code == 200, response.status_code
    return response, nonce


async def one_void(stack: LocalStack, base: str, recheck_every: float) -> tuple[float, int]:
    """(seconds, bytes) of answer received after the void was mined."""
    payer = await anyio.to_thread.run_sync(new_payer, stack)
    url = f"{base}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=120) as client:
        response, nonce = await paid_stream(client, url, stack, payer)
        chunks: AsyncIterator[bytes] = response.aiter_raw()
        await chunks.__anext__()  # streaming: the first chunk is in
        voided = anyio.Event()
        mined_at = 0.0
        late = 0

        async def void_at_random() -> None:
            nonlocal mined_at
            await anyio.sleep(random.uniform(0, recheck_every))  # when the attacker acts
            await anyio.to_thread.run_sync(invalidate, stack, payer, nonce)
            mined_at = time.monotonic()
            voided.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(void_at_random)
            async for piece in chunks:
                if voided.is_set():
                    late += len(piece)
            ended_at = time.monotonic()
        await response.aclose()
    return ended_at - mined_at, late


async def calls_per_minute(stack: LocalStack, seconds: float, recheck_every: float) -> float:
    meter = metered(stack, 20, recheck_every)
    facilitator = meter.runtime.facilitator
    assert isinstance(facilitator, CountingFacilitator)
    payer = await anyio.to_thread.run_sync(new_payer, stack)
    async with serving(meter) as base, httpx.AsyncClient(timeout=120) as client:
        response, _ = await paid_stream(client, f"{base}/v1/chat/completions", stack, payer)
        before = facilitator.verifies  # the admission's own verify
        with anyio.move_on_after(seconds):
            async for _ in response.aiter_raw():
                pass
        rechecks = facilitator.verifies - before
        await response.aclose()
    return rechecks * 60 / seconds


async def main(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}; recheck_every={args.recheck_every}s")
    with local_stack() as stack:
        for rate in args.rates if args.trials else ():
            meter = metered(stack, rate, args.recheck_every)
            seconds: list[float] = []
            sizes: list[float] = []
            async with serving(meter) as base:
                for _ in range(args.trials):
                    late_seconds, late_bytes = await one_void(stack, base, args.recheck_every)
                    seconds.append(late_seconds)
                    sizes.append(late_bytes)
            s, b = Summary.of(seconds), Summary.of(sizes)
            print(
                f"{rate} chunks/s ({len(CHUNK)} B each): after the void was mined, "
                f"seconds median {s.median:.2f} max {s.high:.2f}; "
                f"bytes median {b.median:.0f} max {b.high:.0f} "
                f"(chunks max {b.high / len(CHUNK):.0f}), {args.trials} trials"
            )
        per_minute = await calls_per_minute(stack, args.cost_seconds, args.recheck_every)
        print(f"re-checks: {per_minute:.1f} /verify calls per minute per stream")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--recheck-every", type=float, default=5.0)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--rates", type=lambda v: [int(r) for r in v.split(",")], default=[20, 200])
    parser.add_argument("--cost-seconds", type=float, default=60.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    anyio.run(main, parse())
