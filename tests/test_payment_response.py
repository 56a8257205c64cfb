"""``PAYMENT-RESPONSE``: when an answer is settled before it is sent, and says so.

By default a non-streamed answer paid with ``exact`` is settled first (its flat amount is
known before the answer is) and carries the settlement in ``PAYMENT-RESPONSE``, as the x402
HTTP transport expects; ``upto`` answers are served first and settled after, and streams
are never held: both keep ``X-Payment-Receipt``. ``settle_before_response`` overrides it.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from web3 import Web3
from x402.http import decode_payment_response_header
from x402.http.clients import x402HttpxClient

from tests.apps import meter_options
from tests.examples.conftest import new_funded_payer
from tests.openai_stream import completion_json, sse_events
from tests.sdk_payer import sdk_client
from x402_meter import X402Meter
from x402_meter.devstack import LocalStack, token_balance
from x402_meter.devstack.asgi_server import serving
from x402_meter.devstack.contracts_artifacts import load_artifact

pytestmark = pytest.mark.anyio

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
SINK = "0x000000000000000000000000000000000000dEaD"


def drain(stack: LocalStack, payer: str) -> None:
    """The payer moves all its test USDC away (what voids an unsettled authorization)."""
    w3 = stack.web3()
    token = w3.eth.contract(
        address=Web3.to_checksum_address(stack.asset), abi=load_artifact("Token")["abi"]
    )
    anvil: Any = w3.provider
    anvil.make_request("anvil_impersonateAccount", [payer])
    balance = token.functions.balanceOf(payer).call()
    sent = w3.eth.send_transaction(
        token.functions.transfer(SINK, balance).build_transaction({"from": payer})
    )
    assert w3.eth.wait_for_transaction_receipt(sent)["status"] == 1
    anvil.make_request("anvil_stopImpersonatingAccount", [payer])


def json_app(
    stack: LocalStack, *, on_request: Any = None, status: int = 200, **options: Any
) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat() -> JSONResponse:  # sync: runs on a worker thread, so it may call the chain
        if on_request is not None:
            on_request()
        return JSONResponse(completion_json(), status_code=status)

    app.add_middleware(X402Meter, **meter_options(stack, **options))
    return app


def stream_app(stack: LocalStack, **options: Any) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> StreamingResponse:
        return StreamingResponse(iter(sse_events()), media_type="text/event-stream")

    app.add_middleware(X402Meter, **meter_options(stack, **options))
    return app


async def pay(stack: LocalStack, app: FastAPI, payer: LocalAccount) -> tuple[httpx.Response, Any]:
    key = "0x" + bytes(payer.key).hex()
    async with serving(app) as base, x402HttpxClient(sdk_client(stack, key)) as client:
        response = await client.post(f"{base}/v1/chat/completions", json=CHAT)
        receipt = None
        if "x-payment-receipt" in response.headers:
            receipt = (
                await client.get(base + response.headers["x-payment-receipt"], params={"wait": 20})
            ).json()
    return response, receipt


async def test_an_exact_answer_is_settled_first_and_says_so_in_payment_response(
    x402_local_stack: LocalStack,
) -> None:
    payer = new_funded_payer(x402_local_stack)
    before = token_balance(x402_local_stack.web3(), x402_local_stack.asset, payer.address)
    response, receipt = await pay(
        x402_local_stack, json_app(x402_local_stack, schemes=("exact",)), payer
    )
    assert response.status_code == 200
    assert response.json() == completion_json()
    settled = decode_payment_response_header(response.headers["payment-response"])
    assert settled.success
    assert (settled.transaction, settled.amount) == (receipt["transaction"], receipt["amount"])
    assert settled.network == x402_local_stack.network
    after = token_balance(x402_local_stack.web3(), x402_local_stack.asset, payer.address)
    assert before - after == int(receipt["amount"])


async def test_an_exact_answer_whose_payment_is_voided_before_settling_is_not_sent(
    x402_local_stack: LocalStack,
) -> None:
    """The payer empties its wallet while the answer is being made: the settlement fails, and
    the answer (made, but never paid for) is refused with a 402 instead of handed out."""
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    app = json_app(stack, schemes=("exact",), on_request=lambda: drain(stack, payer.address))
    response, receipt = await pay(stack, app, payer)
    assert response.status_code == 402
    assert response.json()["reason"] == "settlement_failed"
    assert "choices" not in response.text  # nothing of the answer got out
    assert "payment-response" not in response.headers
    assert receipt is None or receipt["status"] != "settled"


async def test_an_upto_answer_is_served_first_and_keeps_only_the_receipt(
    x402_local_stack: LocalStack,
) -> None:
    payer = new_funded_payer(x402_local_stack)
    response, receipt = await pay(x402_local_stack, json_app(x402_local_stack), payer)
    assert response.status_code == 200
    assert "payment-response" not in response.headers
    assert receipt["status"] == "settled"


async def test_an_exact_stream_is_never_held(x402_local_stack: LocalStack) -> None:
    payer = new_funded_payer(x402_local_stack)
    app = stream_app(x402_local_stack, schemes=("exact",))
    response, receipt = await pay(x402_local_stack, app, payer)
    assert response.status_code == 200
    assert response.content == b"".join(sse_events())
    assert "payment-response" not in response.headers
    assert (receipt["scheme"], receipt["status"]) == ("exact", "settled")


async def test_settle_before_response_false_serves_exact_first(
    x402_local_stack: LocalStack,
) -> None:
    payer = new_funded_payer(x402_local_stack)
    app = json_app(x402_local_stack, schemes=("exact",), settle_before_response=False)
    response, receipt = await pay(x402_local_stack, app, payer)
    assert response.status_code == 200
    assert "payment-response" not in response.headers
    assert (receipt["scheme"], receipt["status"]) == ("exact", "settled")


async def test_an_exact_answer_that_failed_is_not_charged_and_claims_no_settlement(
    x402_local_stack: LocalStack,
) -> None:
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    before = token_balance(stack.web3(), stack.asset, payer.address)
    response, receipt = await pay(stack, json_app(stack, schemes=("exact",), status=503), payer)
    assert response.status_code == 503
    assert "payment-response" not in response.headers  # nothing was settled
    assert (receipt["status"], receipt["amount"]) == ("not_charged", "0")
    assert token_balance(stack.web3(), stack.asset, payer.address) == before
