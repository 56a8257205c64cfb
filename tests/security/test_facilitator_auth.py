"""Attacks on the self-hosted facilitator's access control (issue 13, finding 2).

Everything is real: ``x402-meter facilitator`` processes over HTTP, the anvil chain, payments
signed by the official x402 SDK client, the seller's X402Meter in a uvicorn process.
Each test failed on main (875f48c) before the fix, where ``/verify`` and ``/settle`` were
open to anyone and served every ``payTo``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from web3 import Web3
from x402.http.utils import decode_payment_required_header, encode_payment_signature_header
from x402.schemas import PaymentPayload, PaymentRequired

from tests.examples.conftest import new_funded_payer
from tests.fault_harness import free_port, own_facilitator, uvicorn_server
from tests.sdk_payer import requirements, sign
from tests.test_faults import CHAT, PRICE_ATOMIC, settled_receipt
from x402_meter.devstack import LocalStack, token_balance
from x402_meter.devstack.accounts import dev_account
from x402_meter.facilitator_server import PRIVATE_KEY_ENV

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def body_of(payload: PaymentPayload, accepted: Any) -> dict[str, Any]:
    return {
        "x402Version": 2,
        "paymentPayload": payload.model_dump(by_alias=True, exclude_none=True, mode="json"),
        "paymentRequirements": accepted.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }


async def test_a_payer_cannot_settle_its_own_authorization_for_1_unit_while_the_answer_streams(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """Finding 2: on main the payer's own ``/settle`` for 1 unit succeeded mid-stream, the
    seller's settlement then failed and the seller got 1 unit for the whole answer. Now the
    payer, who has no API key, gets 401 and the seller's settlement lands the full charge."""
    seller = Account.create().address  # a fresh payee: its balance moves only by this test
    stack = dataclasses.replace(x402_local_stack, pay_to=seller)
    payer_account = new_funded_payer(stack)
    key, payer = payer_account.key.hex(), payer_account.address
    w3 = stack.web3()
    payer_before = token_balance(w3, stack.asset, payer)

    with uvicorn_server(stack, f"sqlite:///{tmp_path}/ledger.db", tmp_path / "server.log") as srv:
        url = f"{srv.url}/v1/chat/completions?hold_after=3"
        async with httpx.AsyncClient(timeout=60) as client:
            challenge = await client.post(url, json=CHAT)
            assert challenge.status_code == 402
            required = decode_payment_required_header(challenge.headers["payment-required"])
            assert isinstance(required, PaymentRequired)
            accepted = required.accepts[0]
            payload = await sign(stack, key, accepted)
            header = {"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)}
            async with client.stream("POST", url, json=CHAT, headers=header) as answer:
                assert answer.status_code == 200  # verified, streaming, held after 3 chunks
                receipt_path = answer.headers["x-payment-receipt"]

                cheap = accepted.model_copy(update={"amount": "1"})
                attack = await client.post(
                    f"{stack.facilitator_url}/settle", json=body_of(payload, cheap)
                )
                assert attack.status_code == 401
                assert attack.headers["www-authenticate"].startswith("Bearer")
                assert attack.json()["success"] is False
                assert attack.json()["errorReason"] == "unauthorized"

                await client.post(f"{srv.url}/release")
                body = b"".join([chunk async for chunk in answer.aiter_bytes()])
            assert body.endswith(b"data: [DONE]\n\n")
            receipt = await settled_receipt(client, srv.url, receipt_path)

    assert receipt["status"] == "settled"
    charged = int(receipt["amount"])
    assert charged == (receipt["input_tokens"] + receipt["output_tokens"]) * PRICE_ATOMIC > 1
    assert token_balance(w3, stack.asset, seller) == charged
    assert token_balance(w3, stack.asset, payer) == payer_before - charged


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"Authorization": "Bearer not-the-key-of-this-facilitator"},
        {"X-API-Key": "not-the-key-of-this-facilitator"},
        {"Authorization": "Basic c3RyYW5nZXI6cGFzc3dvcmQ="},
    ],
    ids=["none", "wrong-bearer", "wrong-x-api-key", "basic"],
)
async def test_a_stranger_cannot_use_the_facilitator_as_a_relayer(
    x402_local_stack: LocalStack, credentials: dict[str, str]
) -> None:
    """Finding 2: on main a stranger's own authorization (to a payee of its choosing) was
    settled by our facilitator, at our gas cost (20 of 20 accepted). Now: 401, no
    transaction, the facilitator's ETH balance and nonce unchanged."""
    stack = x402_local_stack
    friend = Account.create().address
    accepted = requirements(stack, "upto", 1_000, pay_to=friend)
    payload = await sign(stack, new_funded_payer(stack).key.hex(), accepted)
    w3 = stack.web3()
    relayer = Web3.to_checksum_address(stack.facilitator_address)
    eth_before = w3.eth.get_balance(relayer)
    nonce_before = w3.eth.get_transaction_count(relayer)

    async with httpx.AsyncClient(timeout=60) as client:
        for path in ("/verify", "/settle"):
            response = await client.post(
                f"{stack.facilitator_url}{path}",
                json=body_of(payload, accepted),
                headers=credentials,
            )
            assert response.status_code == 401, response.text
            assert response.headers["www-authenticate"].startswith("Bearer")
            answer = response.json()
            assert answer.get("invalidReason", answer.get("errorReason")) == "unauthorized"

    assert w3.eth.get_balance(relayer) == eth_before
    assert w3.eth.get_transaction_count(relayer) == nonce_before
    assert token_balance(w3, stack.asset, friend) == 0


async def test_a_facilitator_refuses_a_payee_it_does_not_serve(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """Finding 2: on main the facilitator verified and settled for any ``payTo``. Started with
    ``--pay-to`` the seller, it now refuses requirements for anyone else (403, a reason of
    its own), even from a caller with a valid key, and sends no transaction."""
    stack = x402_local_stack
    port = free_port()
    with own_facilitator(stack, tmp_path / "f.log", port, pay_to=[stack.pay_to]):
        own = dataclasses.replace(stack, facilitator_url=f"http://127.0.0.1:{port}")
        elsewhere = Account.create().address
        w3 = stack.web3()
        relayer = Web3.to_checksum_address(dev_account(9).address)
        nonce_before = w3.eth.get_transaction_count(relayer)
        async with httpx.AsyncClient(timeout=60, headers=stack.facilitator_headers()) as client:
            served = requirements(own, "upto", 1_000)
            payer = new_funded_payer(stack).key.hex()
            payload = await sign(own, payer, served)
            response = await client.post(
                f"{own.facilitator_url}/verify", json=body_of(payload, served)
            )
            assert response.json()["isValid"] is True  # the payee it serves: fine

            other = requirements(own, "upto", 1_000, pay_to=elsewhere)
            payload = await sign(own, payer, other)
            for path, reason_key in (("/verify", "invalidReason"), ("/settle", "errorReason")):
                response = await client.post(
                    f"{own.facilitator_url}{path}", json=body_of(payload, other)
                )
                assert response.status_code == 403, response.text
                assert response.json()[reason_key] == "pay_to_not_served"

        assert w3.eth.get_transaction_count(relayer) == nonce_before
        assert token_balance(w3, stack.asset, elsewhere) == 0


def run_facilitator_cli(stack: LocalStack, *flags: str, extra_env: dict[str, str]) -> str:
    """``x402-meter facilitator`` that must refuse to start: its stderr (it exits at once)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("X402_FACILITATOR_")}
    env |= {PRIVATE_KEY_ENV: dev_account(9).private_key, **extra_env}
    command = [sys.executable, "-m", "x402_meter", "facilitator", "--rpc-url", stack.rpc_url]
    command += ["--network", stack.network, "--port", "0", *flags]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("the facilitator started instead of refusing to") from exc
    assert done.returncode == 2, done.stderr
    return done.stderr


def test_the_facilitator_will_not_start_without_keys_unless_told_to_run_insecure(
    x402_local_stack: LocalStack,
) -> None:
    """Finding 2: on main ``x402-meter facilitator`` started open to anyone, with no flag."""
    stderr = run_facilitator_cli(x402_local_stack, "--any-pay-to", extra_env={})
    assert "X402_FACILITATOR_API_KEYS" in stderr
    assert "--insecure-no-auth" in stderr


def test_the_facilitator_will_not_start_without_payees_unless_told_to_serve_any(
    x402_local_stack: LocalStack,
) -> None:
    """Finding 2: on main ``x402-meter facilitator`` served every payTo, with no flag."""
    keys = {"X402_FACILITATOR_API_KEYS": "k" * 32}
    stderr = run_facilitator_cli(x402_local_stack, extra_env=keys)
    assert "--pay-to" in stderr
    assert "--any-pay-to" in stderr


def test_a_short_api_key_is_refused_at_startup(x402_local_stack: LocalStack) -> None:
    keys = {"X402_FACILITATOR_API_KEYS": "short"}
    stderr = run_facilitator_cli(x402_local_stack, "--any-pay-to", extra_env=keys)
    assert "at least 16 characters" in stderr
    assert "short" not in stderr.replace("at least", "")  # the key itself is never echoed


def test_insecure_no_auth_says_so_loudly(x402_local_stack: LocalStack, tmp_path: Path) -> None:
    """With ``--insecure-no-auth`` it starts, but its log opens with a WARNING saying so."""
    from x402_meter.devstack.stack import start_facilitator_process, wait_for_facilitator

    log = tmp_path / "insecure.log"
    process = start_facilitator_process(
        rpc_url=x402_local_stack.rpc_url,
        network=x402_local_stack.network,
        private_key=dev_account(9).private_key,
        api_keys=None,
        pay_to=None,
        log_path=log,
    )
    try:
        url = wait_for_facilitator(process)
        assert httpx.post(f"{url}/verify", json={}).status_code == 400  # open: no 401
    finally:
        process.stop()
    warnings = [line for line in log.read_text().splitlines() if line.startswith("WARNING")]
    assert any("--insecure-no-auth" in line and "anyone" in line for line in warnings)


def test_the_api_key_is_never_in_the_meter_config_repr(x402_local_stack: LocalStack) -> None:
    from tests.apps import meter_options
    from x402_meter.config import MeterConfig

    options = meter_options(x402_local_stack)
    assert x402_local_stack.facilitator_api_key not in repr(MeterConfig.create(**options))


def test_supported_and_health_stay_public(x402_local_stack: LocalStack) -> None:
    for path in ("/supported", "/health"):
        assert httpx.get(f"{x402_local_stack.facilitator_url}{path}").status_code == 200
