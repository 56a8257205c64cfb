"""Issue 13, finding 3: no stream outlives, or outruns, its payment.

Against real servers: tests/fault_app.py in a uvicorn process, the local chain, the bundled
facilitator over HTTP, payments signed by the official x402 SDK client. Each payer is a new
account (gas, 100 test USDC, a Permit2 approval), so what it does on chain touches no other
test. Every test here failed on main before the fix (commit 875f48c, checked by serving its
``src`` with these tests): there a voided stream ran on and the payer was served again, and
a held stream ran past its authorization's deadline.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract.contract import ContractFunction
from x402.http.utils import encode_payment_signature_header
from x402.mechanisms.evm.constants import PERMIT2_ADDRESS
from x402.schemas import PaymentRequired

from tests.examples.conftest import fund, new_funded_payer
from tests.fault_harness import uvicorn_server
from tests.ledger_rows import ledger
from tests.sdk_payer import sign
from tests.test_faults import CHAT, PRICE_ATOMIC, balance, settled_receipt
from x402_meter.devstack import LocalStack
from x402_meter.devstack.contracts_artifacts import load_artifact

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

RECHECK_EVERY: Final = 1.0
PER_SECOND: Final = 20
EVENTS_BOUND: Final = int(5 * RECHECK_EVERY * PER_SECOND)
"""Chunks a voiding payer may still get: the design bound is about three re-check periods
(one in flight when the void lands, the wait for the next, its answer); five for slack."""


def send_as(stack: LocalStack, account: LocalAccount, call: ContractFunction) -> None:
    """Sign and send ``call`` from ``account`` itself, as a payer voiding its payment would."""
    w3 = stack.web3()
    transaction = call.build_transaction(
        {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address)}
    )
    signed = account.sign_transaction(transaction)  # type: ignore[arg-type]
    sent = w3.eth.send_raw_transaction(signed.raw_transaction)
    assert w3.eth.wait_for_transaction_receipt(sent)["status"] == 1


def contract(stack: LocalStack, address: str, artifact: str) -> Any:
    w3 = stack.web3()
    return w3.eth.contract(
        address=Web3.to_checksum_address(address), abi=load_artifact(artifact)["abi"]
    )


def void(stack: LocalStack, payer: LocalAccount, how: str, nonce: int) -> None:
    """Make the authorization with ``nonce`` unsettleable, the way ``how`` says."""
    token = contract(stack, stack.asset, "Token")
    if how == "nonce":
        permit2 = contract(stack, PERMIT2_ADDRESS, "Permit2")
        call = permit2.functions.invalidateUnorderedNonces(nonce >> 8, 1 << (nonce & 255))
    elif how == "funds":
        everything = token.functions.balanceOf(payer.address).call()
        call = token.functions.transfer(stack.pay_to, everything)
    else:
        call = token.functions.approve(PERMIT2_ADDRESS, 0)
    send_as(stack, payer, call)


async def payment(stack: LocalStack, url: str, payer: LocalAccount) -> tuple[dict[str, str], int]:
    """A payment header for one chat request, signed by the SDK client, and its nonce."""
    async with httpx.AsyncClient() as client:
        challenge = await client.post(f"{url}/v1/chat/completions", json=CHAT)
    required = PaymentRequired.model_validate_json(
        base64.b64decode(challenge.headers["payment-required"])
    )
    payload = await sign(stack, payer.key.hex(), required.accepts[0])
    nonce = int(payload.payload["permit2Authorization"]["nonce"])
    return {"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)}, nonce


async def events_after(response: httpx.Response, action: Callable[[], None]) -> int:
    """Read the stream; after its third event run ``action``; count the events that still
    arrive until the stream ends (or until the bound is passed, when it would not end)."""
    seen, after, acted = b"", 0, False
    async for chunk in response.aiter_raw():
        if acted:
            after += chunk.count(b"\n\n")
            if after > EVENTS_BOUND:
                break
            continue
        seen += chunk
        if seen.count(b"\n\n") >= 3:
            action()
            acted = True
    return after


@pytest.mark.parametrize("how", ["nonce", "funds", "approval"])
async def test_a_payer_that_voids_mid_stream_stops_receiving_and_is_then_refused(
    x402_local_stack: LocalStack, tmp_path: Path, how: str
) -> None:
    """Finding 3: invalidating the Permit2 nonce, moving the funds or revoking the approval
    while an endless answer streams ends the answer within a few re-check periods, and the
    payer's next payment (funds and approval back in place) is refused: 402 payer_voided.
    Failed on main: the answer streamed on past the bound, and the next request was served."""
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    with uvicorn_server(
        stack,
        f"sqlite:///{tmp_path}/ledger.db",
        tmp_path / "server.log",
        meter_options={"recheck_every": RECHECK_EVERY},
    ) as server:
        url = f"{server.url}/v1/chat/completions"
        headers, nonce = await payment(stack, server.url, payer)
        async with httpx.AsyncClient(timeout=60) as client:
            request = client.build_request(
                "POST", f"{url}?per_second={PER_SECOND}", json=CHAT, headers=headers
            )
            response = await client.send(request, stream=True)
            assert response.status_code == 200
            receipt_path = response.headers["x-payment-receipt"]
            after = await events_after(response, lambda: void(stack, payer, how, nonce))
            await response.aclose()
            assert after <= EVENTS_BOUND

            receipt = await settled_receipt(client, server.url, receipt_path)
            assert receipt["status"] == "failed"

            fund(stack, payer.address)  # funds and approval back: only the refusal is left
            headers, _ = await payment(stack, server.url, payer)
            again = await client.post(url, json=CHAT, headers=headers)
    assert again.status_code == 402
    assert again.json()["reason"] == "payer_voided"


async def test_a_voided_held_stream_ends_and_the_ledger_cli_lists_and_clears_the_payer(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """Finding 3: a stream whose app is waiting (not sending) still ends when the payer
    invalidates its nonce; `x402-meter ledger voided` lists the payer, `clear-voided` lets
    it pay again. Failed on main: the held stream never ended (the read timed out)."""
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    store = f"sqlite:///{tmp_path}/ledger.db"
    seller_before = balance(stack, stack.pay_to)
    with uvicorn_server(
        stack, store, tmp_path / "server.log", meter_options={"recheck_every": RECHECK_EVERY}
    ) as server:
        url = f"{server.url}/v1/chat/completions"
        headers, nonce = await payment(stack, server.url, payer)
        async with httpx.AsyncClient(timeout=30) as client:
            held = f"{url}?hold_after=3"
            request = client.build_request("POST", held, json=CHAT, headers=headers)
            response = await client.send(request, stream=True)
            receipt_path = response.headers["x-payment-receipt"]
            after = await events_after(response, lambda: void(stack, payer, "nonce", nonce))
            assert after == 0  # the app sent nothing more; the server ended the answer
            receipt = await settled_receipt(client, server.url, receipt_path)
            assert receipt["status"] == "failed"
            assert balance(stack, stack.pay_to) == seller_before

            listed = ledger(store, "voided")
            assert listed.returncode == 0
            assert payer.address.lower() in listed.stdout
            assert "invalid_upto_evm_transaction_failed" in listed.stdout
            cleared = ledger(store, "clear-voided", payer.address)
            assert cleared.returncode == 0
            assert payer.address.lower() not in ledger(store, "voided").stdout
            assert ledger(store, "clear-voided", payer.address).returncode == 1

            headers, _ = await payment(stack, server.url, payer)
            served = await client.post(url, json=CHAT, headers=headers)
            assert served.status_code == 200
            assert served.text.endswith("data: [DONE]\n\n")


async def test_an_answer_that_would_outlive_its_authorization_is_ended_and_settled(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """Finding 3: an honest answer still running when its authorization nears its deadline
    (max_timeout_seconds=30, expiry_margin=25: about 5 s in) is ended there and settled on
    chain for what was served. Failed on main: the held stream ran on past the deadline
    (the read timed out), and no settlement could have landed after it."""
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    seller_before = balance(stack, stack.pay_to)
    options = {"max_timeout_seconds": 30, "expiry_margin": 25.0, "recheck_every": RECHECK_EVERY}
    with uvicorn_server(
        stack, f"sqlite:///{tmp_path}/ledger.db", tmp_path / "server.log", meter_options=options
    ) as server:
        url = f"{server.url}/v1/chat/completions"
        headers, _ = await payment(stack, server.url, payer)
        async with httpx.AsyncClient(timeout=45) as client:
            held = f"{url}?hold_after=3"
            request = client.build_request("POST", held, json=CHAT, headers=headers)
            response = await client.send(request, stream=True)
            assert response.status_code == 200
            body = await response.aread()  # ends on the server's decision: nothing is released
            assert body.count(b"\n\n") == 3
            assert not body.endswith(b"data: [DONE]\n\n")
            receipt_path = response.headers["x-payment-receipt"]
            receipt = await settled_receipt(client, server.url, receipt_path)
    assert receipt["status"] == "settled"
    assert receipt["output_tokens"] > 0
    amount = int(receipt["amount"])
    assert amount == (receipt["input_tokens"] + receipt["output_tokens"]) * PRICE_ATOMIC
    assert 0 < amount < int(receipt["max_amount"])
    assert balance(stack, stack.pay_to) == seller_before + amount
    assert stack.web3().eth.get_transaction_receipt(receipt["transaction"])["status"] == 1
