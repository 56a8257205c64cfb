"""Running the gateway: two workers on Redis, readiness, metrics, access logs, shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import anyio
import httpx
import pytest
from eth_account.signers.local import LocalAccount
from x402.http import decode_payment_required_header, encode_payment_signature_header
from x402.schemas import PaymentRequirements

from tests.gateway.harness import (
    CHAT,
    QUESTION,
    UPSTREAM_KEY,
    GatewayProcess,
    StubUpstream,
    closed_port,
    gateway_process,
    openai_config,
    paying_client,
)
from tests.sdk_payer import sign
from x402_meter.devstack import LocalStack, token_balance
from x402_meter.store import LedgerState, open_store

pytestmark = pytest.mark.anyio


def access_lines(gateway: GatewayProcess) -> list[dict[str, object]]:
    return [
        json.loads(line)
        for line in gateway.log_text().splitlines()
        if line.startswith('{"event":"access"')
    ]


async def test_two_workers_on_redis_share_reservations_and_settle_every_answer(
    x402_local_stack: LocalStack,
    upstream: StubUpstream,
    redis_url: str,
    payer: LocalAccount,
    tmp_path: Path,
) -> None:
    stack = x402_local_stack
    config = openai_config(upstream.url)
    with gateway_process(stack, tmp_path, config, workers=2, store=redis_url) as gateway:
        seller_before = token_balance(stack.web3(), stack.asset, gateway.seller)
        receipts: list[dict[str, object]] = []
        async with paying_client(stack, payer) as client:

            async def ask(stream: bool) -> None:
                answer = await client.post(gateway.url + CHAT, json={**QUESTION, "stream": stream})
                assert answer.status_code == 200, answer.text
                path = answer.headers["x-payment-receipt"]
                receipts.append((await client.get(gateway.url + path, params={"wait": 20})).json())

            async with anyio.create_task_group() as tasks:
                for i in range(6):
                    tasks.start_soon(ask, i % 2 == 0)
        # One authorization, sent to the gateway four times at once: served once.
        async with httpx.AsyncClient() as plain:
            challenge = await plain.post(gateway.url + CHAT, json=QUESTION)
            (accepted,) = [
                r
                for r in decode_payment_required_header(
                    challenge.headers["payment-required"]
                ).accepts
                if r.scheme == "upto"
            ]
            assert isinstance(accepted, PaymentRequirements)
            key = "0x" + bytes(payer.key).hex()
            header = encode_payment_signature_header(await sign(stack, key, accepted))
            statuses: list[int] = []

            async def replay() -> None:
                async with httpx.AsyncClient() as own_connection:
                    answer = await own_connection.post(
                        gateway.url + CHAT, json=QUESTION, headers={"payment-signature": header}
                    )
                statuses.append(answer.status_code)
                if answer.status_code == 200:
                    path = answer.headers["x-payment-receipt"]
                    receipts.append(
                        (await plain.get(gateway.url + path, params={"wait": 20})).json()
                    )
                else:
                    assert answer.json()["reason"] == "payment_already_used"

            async with anyio.create_task_group() as tasks:
                for _ in range(4):
                    tasks.start_soon(replay)
        assert sorted(statuses) == [200, 402, 402, 402]
        assert [r["status"] for r in receipts] == ["settled"] * 7
        earned = token_balance(stack.web3(), stack.asset, gateway.seller) - seller_before
        assert earned == sum(int(str(r["amount"])) for r in receipts)
        workers = {line["worker"] for line in access_lines(gateway)}
    assert len(workers) >= 1  # which worker takes a connection is the kernel's choice


async def test_readiness_says_which_part_is_not_ready(
    x402_local_stack: LocalStack, upstream: StubUpstream, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{closed_port()}"
    env = {"X402_FACILITATOR_URL": closed}
    with gateway_process(x402_local_stack, tmp_path, openai_config(upstream.url), env=env) as gw:
        async with httpx.AsyncClient() as client:
            ready = await client.get(gw.url + "/healthz")
            live = await client.get(gw.url + "/livez")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unready", "store": "ok", "facilitator": "unreachable"}
    assert live.status_code == 200


async def test_metrics_are_labelled_by_upstream_and_configured_model_only(
    x402_local_stack: LocalStack, gateway: GatewayProcess, payer: LocalAccount
) -> None:
    async with paying_client(x402_local_stack, payer) as client:
        for model in ("local-stub", "stub-fail-500"):
            answer = await client.post(gateway.url + CHAT, json={**QUESTION, "model": model})
            # A final receipt means the request is done, its metrics counted.
            await client.get(gateway.url + answer.headers["x-payment-receipt"], params={"wait": 20})
        await client.post(gateway.url + CHAT, json={**QUESTION, "model": "made-up-model-1"})
        metrics = (await client.get(gateway.url + "/metrics")).text
    assert 'x402_gateway_tokens_total{kind="output",model="local-stub",upstream="openai"}' in (
        metrics
    )
    assert 'model="stub-*",outcome="5xx",upstream="openai"' in metrics
    assert "made-up-model-1" not in metrics
    assert "stub-fail-500" not in metrics


async def test_access_lines_say_what_happened_and_carry_no_header_or_body(
    x402_local_stack: LocalStack, gateway: GatewayProcess, payer: LocalAccount
) -> None:
    logged = gateway.process.expect_line(
        lambda line: line.startswith('{"event":"access"') and '"status":200' in line
    )
    async with paying_client(x402_local_stack, payer) as client:
        answer = await client.post(
            gateway.url + CHAT + "?token=query-secret",
            json={**QUESTION, "user": "body-secret"},
            headers={"authorization": "Bearer header-secret"},
        )
    assert await anyio.to_thread.run_sync(logged.wait, 30)
    receipt_id = answer.headers["x-payment-receipt"].rsplit("/", 1)[-1]
    (line,) = [entry for entry in access_lines(gateway) if entry["receipt"] == receipt_id]
    assert (line["status"], line["upstream"], line["model"], line["upstream_outcome"]) == (
        200,
        "openai",
        "local-stub",
        "2xx",
    )
    log = gateway.log_text()
    for secret in ("query-secret", "body-secret", "header-secret", UPSTREAM_KEY):
        assert secret not in log


async def test_a_caller_that_leaves_mid_stream_stops_the_upstream_call(
    x402_local_stack: LocalStack, gateway: GatewayProcess, payer: LocalAccount
) -> None:
    """The upstream stalls after its first chunk; the caller leaves. The gateway ends the
    call then (outcome ``2xx``), not when the upstream's read timeout would (``timeout``),
    and charges what was delivered."""
    logged = gateway.process.expect_line(
        lambda line: line.startswith('{"event":"access"') and '"status":200' in line
    )
    body = {**QUESTION, "model": "stub-stall-mid", "stream": True}
    async with paying_client(x402_local_stack, payer) as client:
        async with client.stream("POST", gateway.url + CHAT, json=body) as answer:
            assert answer.status_code == 200
            await anext(answer.aiter_raw())
            path = answer.headers["x-payment-receipt"]
        # leaving the block closed the connection
        receipt = (await client.get(gateway.url + path, params={"wait": 20})).json()
    assert await anyio.to_thread.run_sync(logged.wait, 30)
    (line,) = [
        entry for entry in access_lines(gateway) if entry["receipt"] == path.rsplit("/", 1)[-1]
    ]
    assert line["upstream_outcome"] == "2xx"
    assert receipt["status"] == "settled"
    assert int(receipt["amount"]) > 0


async def test_shutdown_lets_answers_in_flight_be_charged_and_settled(
    x402_local_stack: LocalStack, upstream: StubUpstream, payer: LocalAccount, tmp_path: Path
) -> None:
    """SIGTERM while a paid stream is open: the stream ends at the grace period, and the
    process exits only once its charge is settled on chain."""
    stack = x402_local_stack
    store = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    config = openai_config(upstream.url).replace(
        "max_request_body = 65536", "max_request_body = 65536\nshutdown_timeout = 1"
    )
    with gateway_process(stack, tmp_path, config, store=store) as gateway:
        async with paying_client(stack, payer) as client:
            body = {**QUESTION, "model": "stub-stall-mid", "stream": True}
            async with client.stream("POST", gateway.url + CHAT, json=body) as answer:
                assert answer.status_code == 200
                chunks = answer.aiter_raw()
                await anext(chunks)  # the first chunk arrived: the answer is in flight
                os.kill(gateway.process.pid, signal.SIGTERM)
                # At the end of its grace period uvicorn closes the connection.
                with contextlib.suppress(httpx.RemoteProtocolError):
                    async for _ in chunks:
                        pass
        exit_code = await anyio.to_thread.run_sync(lambda: gateway.process.wait(60))
    assert exit_code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once done
    ledger = open_store(store)
    try:
        (row,) = await ledger.list()
    finally:
        await ledger.aclose()
    assert row.state is LedgerState.SETTLED, row
    assert row.amount is not None
    assert row.amount > 0
