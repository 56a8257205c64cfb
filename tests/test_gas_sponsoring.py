"""First payment without a prior approval: EIP-2612 gas sponsoring for `upto`.

A brand-new wallet holds test USDC but no ETH and has never approved Permit2. The official
SDK client signs an EIP-2612 permit along with the Permit2 authorization; the facilitator
submits both through the upto proxy's settleWithPermit and pays the gas.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.signers import EthAccountSigner, EthAccountSignerWithRPC
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import PaymentRequired

from tests.apps import meter_options
from x402_meter import X402Meter, metered
from x402_meter.devstack import LocalStack, token_balance
from x402_meter.devstack.accounts import DevAccount
from x402_meter.devstack.asgi_server import serving
from x402_meter.devstack.contracts_artifacts import load_artifact
from x402_meter.devstack.deploy import DevToken, fund_payers
from x402_meter.devstack.stub_model import stream_chat

pytestmark = pytest.mark.anyio

SETTLE_WITH_PERMIT = "016c1748"
SETTLE = "ff11e7b4"
CHAT = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}


def new_wallet(stack: LocalStack) -> LocalAccount:
    """Test USDC only: no ETH, no Permit2 approval, as most new wallets are."""
    account: LocalAccount = Account.create()
    token = DevToken(
        stack.asset, stack.asset_name, "USDC", stack.asset_version, stack.asset_decimals
    )
    holder = DevAccount(-1, account.key.hex(), account.address)
    fund_payers(stack.web3(), token, [holder], amount=50 * 10**6, approve_permit2=False)
    return account


def permit2_allowance(stack: LocalStack, owner: str) -> int:
    w3 = stack.web3()
    token = w3.eth.contract(
        address=w3.to_checksum_address(stack.asset), abi=load_artifact("Token")["abi"]
    )
    return int(token.functions.allowance(owner, stack.permit2).call())


def client_for(stack: LocalStack, account: LocalAccount, *, reads_chain: bool) -> x402Client:
    signer = (
        EthAccountSignerWithRPC(account, stack.rpc_url)
        if reads_chain
        else EthAccountSigner(account)
    )
    client = x402Client().register(stack.network, UptoEvmClientScheme(signer))
    client.set_spend_controls(
        {"allowed_assets": [{"network": stack.network, "asset": stack.asset}]}
    )
    return client


def app_for(stack: LocalStack) -> FastAPI:
    app = FastAPI()

    async def answer(request: Request) -> StreamingResponse:
        return StreamingResponse(stream_chat(await request.json()), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        return await answer(request)

    @app.post("/v1/small")
    @metered(max_tokens=256)  # costs at most 512 units: within what the first permit left
    async def small(request: Request) -> StreamingResponse:
        return await answer(request)

    app.add_middleware(X402Meter, **meter_options(stack))
    return app


async def settled(client: httpx.AsyncClient, base: str, response: httpx.Response) -> dict[str, Any]:
    receipt: dict[str, Any] = (
        await client.get(base + response.headers["x-payment-receipt"], params={"wait": 20})
    ).json()
    assert receipt["status"] == "settled", receipt
    return receipt


def called_function(stack: LocalStack, transaction: str) -> str:
    return bytes(stack.web3().eth.get_transaction(HexStr(transaction))["input"])[:4].hex()


async def test_a_new_wallet_pays_its_first_request_with_a_gasless_permit(
    x402_local_stack: LocalStack,
) -> None:
    stack = x402_local_stack
    wallet = new_wallet(stack)
    w3 = stack.web3()
    assert (w3.eth.get_balance(wallet.address), permit2_allowance(stack, wallet.address)) == (0, 0)

    async with serving(app_for(stack)) as base:
        async with httpx.AsyncClient() as plain:
            challenge = await plain.post(f"{base}/v1/chat/completions", json=CHAT)
        required = PaymentRequired.model_validate_json(
            base64.b64decode(challenge.headers["payment-required"])
        )
        assert required.extensions is not None
        assert "eip2612GasSponsoring" in required.extensions
        maximum = int(required.accepts[0].amount)

        async with x402HttpxClient(
            client_for(stack, wallet, reads_chain=True), timeout=60
        ) as client:
            first = await client.post(f"{base}/v1/chat/completions", json=CHAT)
            assert first.status_code == 200
            first_receipt = await settled(client, base, first)
            second = await client.post(f"{base}/v1/small", json=CHAT)  # now through the usual path
            assert second.status_code == 200
            second_receipt = await settled(client, base, second)

    first_amount, second_amount = int(first_receipt["amount"]), int(second_receipt["amount"])
    assert called_function(stack, first_receipt["transaction"]) == SETTLE_WITH_PERMIT
    assert called_function(stack, second_receipt["transaction"]) == SETTLE
    assert (
        token_balance(w3, stack.asset, wallet.address) == 50 * 10**6 - first_amount - second_amount
    )
    assert permit2_allowance(stack, wallet.address) == maximum - first_amount - second_amount
    assert w3.eth.get_balance(wallet.address) == 0  # it never paid gas


async def test_without_a_permit_or_an_allowance_the_answer_is_412(
    x402_local_stack: LocalStack,
) -> None:
    stack = x402_local_stack
    wallet = new_wallet(stack)
    # A signer that cannot read the chain does not know it needs a permit, so sends none.
    payer = client_for(stack, wallet, reads_chain=False)
    async with serving(app_for(stack)) as base, x402HttpxClient(payer, timeout=60) as client:
        response = await client.post(f"{base}/v1/chat/completions", json=CHAT)
    assert response.status_code == 412
    assert response.json()["reason"] == "permit2_allowance_required"
    assert token_balance(stack.web3(), stack.asset, wallet.address) == 50 * 10**6
