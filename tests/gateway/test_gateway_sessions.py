"""Sessions through the gateway: ``x402-meter gateway`` (a real uvicorn process) offering
``batch-settlement`` from its config, paid by the official x402 SDK client.

The SDK's batch-settlement client (signing with a key that reads the chain, as its
recovery needs) in the SDK's httpx client pays the stub upstream through the gateway: the
first answer deposits (one token transfer, into escrow), later ones pay by voucher, a
streamed one among them (its charge reaches the SDK client through the next request's
corrective 402). The gateway's own SQLite file then holds the channel, charged exactly what
the answers' receipts say, and its ``/metrics`` count the deposit and the vouchers it
admitted without the facilitator. Restarted, the gateway's claims worker claims the
charges and sweeps them to the seller, and the ledger CLI shows the claim.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402.http import decode_payment_required_header, encode_payment_signature_header
from x402.http.clients import x402HttpxClient
from x402.http.utils import decode_payment_response_header
from x402.mechanisms.evm.batch_settlement.client import sign_voucher
from x402.mechanisms.evm.batch_settlement.errors import ERR_INVALID_VOUCHER_SIGNATURE
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequirements

from tests.channel_seller import Balances, payer_client, payer_scheme
from tests.fault_harness import free_port
from tests.gateway.harness import (
    CHAT,
    QUESTION,
    START_SECONDS,
    UPSTREAM_KEY_ENV,
    StubUpstream,
    gateway_env,
    gateway_process,
)
from tests.test_session_refunds import refund
from x402_meter.devstack import LocalStack
from x402_meter.devstack.processes import ChildProcess

pytestmark = pytest.mark.anyio

STREAMED: Final = {**QUESTION, "stream": True}


def sessions_config(upstream_url: str) -> str:
    """A gateway offering sessions beside upto; claims kept out of the test's way (a day's
    withdraw delay lets the claims worker pass every few hours)."""
    return f"""
[gateway]
schemes = ["upto", "batch-settlement"]

[gateway.sessions]
deposit_multiple = 20
withdraw_delay = 86400
claim_interval = 40000

[upstreams.openai]
kind = "openai"
base_url = "{upstream_url}"
api_key_env = "{UPSTREAM_KEY_ENV}"
paths = ["/v1/chat/completions"]

[[upstreams.openai.plans]]
models = ["local-stub"]
price_per_million = {{ input = "1", output = "2" }}
max_tokens = 512
"""


def ledger(*args: str) -> str:
    """``x402-meter ledger ARGS`` as an operator runs it; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "x402_meter", "ledger", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def receipt_amount(receipt: dict[str, Any]) -> int:
    assert receipt["status"] == "settled", receipt
    return int(receipt["amount"])


async def test_a_gateway_serves_a_session_one_deposit_then_vouchers_paid_by_the_sdk_client(
    x402_local_stack: LocalStack,
    upstream: StubUpstream,
    payer: LocalAccount,
    tmp_path: Path,
) -> None:
    stack = x402_local_stack
    with gateway_process(stack, tmp_path, sessions_config(upstream.url)) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as plain:
            challenge = await plain.post(CHAT, json=QUESTION)
        assert challenge.status_code == 402
        offers = decode_payment_required_header(challenge.headers["payment-required"]).accepts
        assert [o.scheme for o in offers] == ["upto", "batch-settlement"]
        (offer,) = [o for o in offers if o.scheme == "batch-settlement"]
        assert isinstance(offer, PaymentRequirements)
        assert (offer.extra or {})["withdrawDelay"] == 86_400
        deposit = int((offer.extra or {})["minDeposit"])
        assert deposit == 20 * int(offer.amount)
        start = Balances.read(stack, payer.address, gateway.seller)

        client = payer_client(stack, payer_scheme(stack, payer))
        async with x402HttpxClient(client, timeout=60, base_url=gateway.url) as http:
            answers = [await http.post(CHAT, json=QUESTION)]
            answers.append(await http.post(CHAT, json=STREAMED))
            answers += [await http.post(CHAT, json=QUESTION) for _ in range(2)]
            assert [a.status_code for a in answers] == [200] * 4, answers[-1].text
            receipts = [(await http.get(a.headers["x-payment-receipt"])).json() for a in answers]
            metrics = (await http.get("/metrics")).text
        assert "data: [DONE]" in answers[1].text  # streamed through, not buffered into JSON

        charges = [receipt_amount(r) for r in receipts]
        not_streamed = [0, 2, 3]
        for answer, charge in zip(
            [answers[n] for n in not_streamed], [charges[n] for n in not_streamed], strict=True
        ):
            settled = decode_payment_response_header(answer.headers["payment-response"])
            assert settled.extra is not None
            assert int(settled.extra["chargedAmount"]) == charge
        # one deposit and nothing else moved: the vouchers' charges wait in the channel
        assert Balances.read(stack, payer.address, gateway.seller) == start.moved(
            payer=-deposit, contract=deposit
        )

    assert 'x402_gateway_session_deposits_total{asset="' in metrics
    assert 'x402_gateway_session_vouchers_total{check="local"} 3.0' in metrics
    assert 'x402_gateway_session_vouchers_total{check="facilitator"}' not in metrics
    assert f'x402_gateway_session_charged_amount_total{{asset="{stack.asset}"' in metrics

    store = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    listed = ledger("channels", "--json", "--store", store).splitlines()
    (channel,) = [json.loads(line) for line in listed]
    assert channel["payer"] == payer.address.lower()
    assert channel["receiver"] == gateway.seller.lower()
    assert (channel["balance"], channel["charged"]) == (str(deposit), str(sum(charges)))
    assert (channel["busy"], channel["claimed"]) == (False, "0")

    # Restarted on its store, the gateway's claims worker claims what the last run charged
    # (its first pass, at startup) and sweeps it to the seller.
    with restarted_gateway(stack, tmp_path, gateway.seller) as log_line:
        assert "swept claims to" in log_line
    assert Balances.read(stack, payer.address, gateway.seller) == start.moved(
        payer=-deposit, contract=deposit - sum(charges), pay_to=sum(charges)
    )
    (claim,) = json_lines(ledger("claims", "--json", "--store", store))
    assert (claim["amount"], [c["channel_id"] for c in claim["channels"]]) == (
        str(sum(charges)),
        [channel["channel_id"]],
    )
    (after,) = json_lines(ledger("channels", "--json", "--store", store))
    assert (after["claimed"], after["unclaimed"]) == (str(sum(charges)), "0")
    assert after["claim_transaction"] == claim["transaction"]


@contextmanager
def restarted_gateway(stack: LocalStack, directory: Path, seller: str) -> Iterator[str]:
    """``x402-meter gateway`` again on ``directory``'s config and store, for ``seller``,
    until its claims worker has swept (the matching log line); every line it writes before
    that is read, so the sweep cannot be missed however early it comes."""
    store = f"sqlite:///{directory / 'ledger.sqlite3'}"
    args = [
        sys.executable,
        "-m",
        "x402_meter",
        "gateway",
        "--config",
        str(directory / "gateway.toml"),
    ]
    process = ChildProcess(
        [*args, "--port", str(free_port())],
        name="gateway-restarted",
        env=gateway_env(stack, seller, store),
        log_path=directory / "gateway-restarted.log",
        merge_stderr=True,
    )
    try:
        yield process.wait_for_line(lambda line: "swept claims to" in line, timeout=START_SECONDS)
    finally:
        process.stop()


def test_the_gateway_refuses_to_start_with_a_claim_interval_that_withdrawals_could_outrun(
    x402_local_stack: LocalStack, upstream: StubUpstream, tmp_path: Path
) -> None:
    """Loud at startup: the command exits 2 with one line naming the setting, before
    anything listens."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        sessions_config(upstream.url).replace("withdraw_delay = 86400", "withdraw_delay = 900")
    )
    env = gateway_env(x402_local_stack, "0x" + "12" * 20, "sqlite:///unused.sqlite3")
    done = subprocess.run(
        [sys.executable, "-m", "x402_meter", "gateway", "--config", str(config), "--port", "9"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "gateway.sessions.claim_interval must be > 0 and at most 150 seconds" in done.stderr
    assert "Traceback" not in done.stderr


def offered_sessions(challenge: httpx.Response) -> list[PaymentRequirements]:
    """The offers of a 402, each a ``batch-settlement`` one (or the test fails)."""
    assert challenge.status_code == 402, challenge.text
    offers = decode_payment_required_header(challenge.headers["payment-required"]).accepts
    assert [o.scheme for o in offers] == ["batch-settlement"]
    return [o for o in offers if isinstance(o, PaymentRequirements)]


def forged_refund(
    stack: LocalStack, payer: LocalAccount, offer: PaymentRequirements
) -> dict[str, str]:
    """The headers of a refund of ``payer``'s channel signed by someone else."""
    config = payer_scheme(stack, payer).build_channel_config(offer)
    channel_id = compute_channel_id(config, stack.network)
    voucher = sign_voucher(EthAccountSigner(Account.create()), channel_id, "0", stack.network)
    body = {"type": "refund", "channelConfig": config.to_dict(), "voucher": voucher.to_dict()}
    payload = PaymentPayload(x402_version=2, accepted=offer, payload=body)
    return {"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)}


async def test_the_sdk_clients_refund_through_the_gateway_returns_exactly_the_rest(
    x402_local_stack: LocalStack,
    upstream: StubUpstream,
    payer: LocalAccount,
    tmp_path: Path,
) -> None:
    """The official SDK client opens a session through the gateway (a JSON answer, then a
    streamed one), and its ``refund(url)`` takes the rest back: the GET probe of the
    POST-only chat path gets the meter's 402, the refund voucher (behind the streamed
    charge: one corrective 402) is claimed and refunded in one transaction. On chain the
    payer is out exactly what the gateway charged. Before it, what an attacker sends to the
    chat path under the refund door (other methods, a malformed payment, a refund signed by
    someone else, on POST with a chat body) is answered by the gateway, moves nothing and
    reaches no upstream: the upstream sees the two paid chats and nothing else."""
    stack = x402_local_stack
    upstream.clear()
    with gateway_process(stack, tmp_path, sessions_config(upstream.url)) as gateway:
        url = f"{gateway.url}{CHAT}"
        start = Balances.read(stack, payer.address, gateway.seller)
        scheme = payer_scheme(stack, payer)
        client = payer_client(stack, scheme)
        async with x402HttpxClient(client, timeout=60, base_url=gateway.url) as http:
            answers = [await http.post(CHAT, json=QUESTION), await http.post(CHAT, json=STREAMED)]
            assert [a.status_code for a in answers] == [200, 200], answers[-1].text
            receipts = [(await http.get(a.headers["x-payment-receipt"])).json() for a in answers]
        charged = sum(receipt_amount(r) for r in receipts)
        deposit = start.payer - Balances.read(stack, payer.address, gateway.seller).payer

        async with httpx.AsyncClient(timeout=60) as plain:
            (offer,) = offered_sessions(await plain.get(url))
            assert offer.pay_to.lower() == gateway.seller.lower()
            for method in ("PUT", "DELETE", "PATCH", "HEAD"):
                other = await plain.request(method, url, json=QUESTION)
                assert other.status_code == 404, (method, other.text)
            malformed = await plain.get(url, headers={"PAYMENT-SIGNATURE": "bm90IGpzb24"})
            assert malformed.status_code == 404, malformed.text
            stranger = forged_refund(stack, payer, offer)
            forged = await plain.post(url, json=QUESTION, headers=stranger)
            assert forged.status_code == 402, forged.text
            assert forged.json()["reason"] == ERR_INVALID_VOUCHER_SIGNATURE
        assert Balances.read(stack, payer.address, gateway.seller).payer == start.payer - deposit

        settled = await refund(scheme, url)

        assert settled.success, settled
        assert int(settled.amount or "") == deposit - charged
        assert Balances.read(stack, payer.address, gateway.seller).payer == start.payer - charged
    assert [r["path"] for r in upstream.requests()] == [CHAT, CHAT]
