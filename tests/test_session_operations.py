"""What an operator sees of real sessions: the metrics and the ledger CLI.

The official SDK client pays the stub model behind X402Meter (uvicorn, a SQLite ledger
with its channels beside it, the bundled facilitator over HTTP, anvil): one deposit, then
vouchers, JSON and streamed answers; then the meter's claims worker claims and sweeps. The
session series of ``PrometheusMetrics`` (on a registry of the test's own) count exactly
that, and ``x402-meter ledger`` shows the channel, its charges and the claim on the same
SQLite file the server wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from x402.http import decode_payment_required_header
from x402.http.clients import x402HttpxClient

from tests.channel_seller import payer_client, payer_scheme
from tests.examples.conftest import new_funded_payer
from tests.test_sessions_sdk import (
    CHAT,
    QUESTION,
    STREAMED,
    seller,
    streamed_usage,
    usage_cost,
)
from x402_meter.devstack import LocalStack
from x402_meter.metrics import PrometheusMetrics

pytestmark = pytest.mark.anyio

MISMATCH = "invalid_batch_settlement_evm_cumulative_amount_mismatch"


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_metrics_and_the_ledger_cli_account_for_every_deposit_voucher_charge_and_claim(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """A deposit (verified by the facilitator), two JSON answers and two streamed ones by
    voucher (admitted locally; each streamed answer costs its successor one corrective
    402, counted as a refusal), then one claims pass: one claim transaction of one channel
    for everything charged, one sweep, nothing left unclaimed. The CLI, run as a user runs
    it on the server's SQLite file, lists the channel with what was charged and claimed,
    its five charges from the ledger with their running cumulative, and the claim."""
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    registry = CollectorRegistry()
    async with seller(stack, tmp_path, metrics=PrometheusMetrics(registry)) as shop:
        async with httpx.AsyncClient(base_url=shop.base, timeout=60) as plain:
            challenge = await plain.post(CHAT, json=QUESTION)
        offers = decode_payment_required_header(challenge.headers["payment-required"]).accepts
        (offer,) = [r for r in offers if r.scheme == "batch-settlement"]
        deposit = int((offer.extra or {})["minDeposit"])
        client = payer_client(stack, payer_scheme(stack, payer))
        async with x402HttpxClient(client, timeout=60, base_url=shop.base) as http:
            answers = [await http.post(CHAT, json=QUESTION)]
            answers += [await http.post(CHAT, json=STREAMED) for _ in range(2)]
            answers += [await http.post(CHAT, json=QUESTION)]
        assert [a.status_code for a in answers] == [200] * 4
        costs = [
            usage_cost(streamed_usage(a.text) if streamed else a.json()["usage"])
            for a, streamed in zip(answers, [False, True, True, False], strict=True)
        ]
        claims = shop.meter.runtime.claims
        assert claims is not None
        report = await claims.claim_now()
        assert len(report.claims) == 1

    money = {"asset": stack.asset, "network": stack.network}
    assert value(registry, "x402_meter_session_deposits_total", **money) == 1
    assert value(registry, "x402_meter_session_deposited_amount_total", **money) == deposit
    assert value(registry, "x402_meter_session_vouchers_total", check="local") == 3
    assert value(registry, "x402_meter_session_vouchers_total", check="facilitator") == 0
    assert value(registry, "x402_meter_session_refusals_total", reason=MISMATCH) == 2
    assert value(registry, "x402_meter_session_charges_total", **money) == 4
    assert value(registry, "x402_meter_session_charged_amount_total", **money) == sum(costs)
    assert value(registry, "x402_meter_session_claims_total", **money) == 1
    assert value(registry, "x402_meter_session_claimed_channels_total", **money) == 1
    assert value(registry, "x402_meter_session_claimed_amount_total", **money) == sum(costs)
    assert value(registry, "x402_meter_session_sweeps_total", **money) == 1
    assert value(registry, "x402_meter_session_unclaimed_amount", **money) == 0

    store = f"sqlite:///{tmp_path / 'ledger.db'}"
    listed = cli("channels", "--json", "--store", store)
    (channel,) = [json.loads(line) for line in listed.splitlines()]
    assert (channel["charged"], channel["claimed"], channel["unclaimed"]) == (
        str(sum(costs)),
        str(sum(costs)),
        "0",
    )
    assert channel["balance"] == str(deposit)
    shown = json.loads(cli("channel", channel["channel_id"], "--json", "--store", store))
    running = [sum(costs[: n + 1]) for n in range(len(costs))]
    assert [c["cumulative"] for c in shown["charges"]] == [str(c) for c in reversed(running)]
    assert [c["amount"] for c in shown["charges"]] == [str(c) for c in reversed(costs)]
    (claim,) = [json.loads(line) for line in cli("claims", "--json", "--store", store).splitlines()]
    assert claim["transaction"] == report.claims[0].transaction
    assert claim["amount"] == str(sum(costs))
    assert shown["claims"][0]["transaction"] == claim["transaction"]


def cli(*args: str) -> str:
    """``x402-meter ledger ARGS`` in a process of its own; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "x402_meter", "ledger", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
