"""Every mainstream x402 client pays the FastAPI example, unchanged, on the first try.

The example is served by real uvicorn on a local stack (anvil, the contracts, the bundled
facilitator over HTTP). Each TypeScript client runs in one node process (npm packages at
the versions pinned in package.json) that pays all of its cells; the official Python SDK
client pays in this process. Every cell has a payer of its own, so that its on-chain
balance moves only by what that cell paid. Every cell: 200 with the whole answer, the
receipt ``settled``, the payer's balance fallen by exactly the receipt's amount, and the
settlement in ``PAYMENT-RESPONSE`` (``X-PAYMENT-RESPONSE`` for v1) where the answer was
settled before it was sent (``exact``). The node processes may not reach anything off
this machine: the harness refuses it and the test asserts that nothing was refused.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import httpx
import pytest
from eth_account.signers.local import LocalAccount
from x402.http.clients import x402HttpxClient

from tests.examples.conftest import Example, new_funded_payer, serve_example
from tests.sdk_payer import sdk_client
from tests.test_gas_sponsoring import new_wallet
from x402_meter.devstack import LocalStack
from x402_meter.devstack.stub_model import ANSWER

pytestmark = pytest.mark.anyio

ROOT: Final = Path(__file__).resolve().parents[2]
CLIENTS_DIR: Final = Path(__file__).with_name("clients")
NODE_PACKAGES: Final = ("@x402/fetch", "@x402/evm", "x402-fetch", "thirdweb", "@faremeter/fetch")
NODE_BOUND_SECONDS: Final = 180  # a guard against a hang, not a timing assertion
MESSAGES: Final = [{"role": "user", "content": "What is x402?"}]
V1_NETWORK: Final = "base-sepolia"  # the interop chain's v1 name (see conftest.py)


@dataclass(frozen=True, slots=True)
class Cell:
    """One paid request: where to, with what body, paid how, by which kind of wallet."""

    name: str
    path: str
    stream: bool
    scheme: str
    new_wallet: bool = False
    """A wallet with test USDC only: no ETH, no Permit2 approval (EIP-2612 gas sponsoring)."""

    @property
    def body(self) -> dict[str, Any]:
        return {"model": "local-stub", "messages": MESSAGES, "stream": self.stream}


UPTO_JSON: Final = Cell("upto JSON", "/v1/chat/completions", stream=False, scheme="upto")
UPTO_STREAM: Final = Cell("upto stream", "/v1/chat/completions", stream=True, scheme="upto")
EXACT: Final = Cell("exact", "/flat/v1/chat/completions", stream=False, scheme="exact")
NEW_WALLET: Final = Cell(
    "upto JSON from a new wallet", "/v1/chat/completions", False, "upto", new_wallet=True
)

NODE_CLIENTS: Final = {  # test id: (script, cells)
    "x402-official-ts": ("official.mjs", (UPTO_JSON, UPTO_STREAM, EXACT, NEW_WALLET)),
    "x402-fetch-v1": ("x402_fetch.mjs", (EXACT,)),
    "thirdweb": ("thirdweb.mjs", (EXACT,)),
    "faremeter": ("faremeter.mjs", (EXACT,)),
}


def _node_ready() -> bool:
    modules = ROOT / "node_modules"
    return shutil.which("node") is not None and all((modules / p).is_dir() for p in NODE_PACKAGES)


needs_node = pytest.mark.skipif(
    not _node_ready() and not os.environ.get("CI"),  # in CI a missing install is a failure
    reason="needs node and the interop clients from npm (npm ci)",
)


@dataclass
class Paid:
    """What a client got for one cell, and what its payer held before."""

    cell: Cell
    payer: LocalAccount
    balance_before: int
    status: int | None = None
    body: str = ""
    headers: dict[str, str] | None = None
    error: str | None = None


def payer_for(stack: LocalStack, cell: Cell) -> LocalAccount:
    return new_wallet(stack) if cell.new_wallet else new_funded_payer(stack)


def prepare(example: Example, cells: tuple[Cell, ...]) -> list[Paid]:
    paid = []
    for cell in cells:
        payer = payer_for(example.stack, cell)
        paid.append(Paid(cell, payer, example.balance(payer.address)))
    return paid


def answer_text(cell: Cell, body: str) -> str:
    """The answer's text, from a JSON completion or from the deltas of an SSE stream."""
    if not cell.stream:
        content: str = json.loads(body)["choices"][0]["message"]["content"]
        return content
    events = [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", f"{cell.name}: the stream did not end with [DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    return "".join(
        choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"]
    )


def settlement_header(headers: dict[str, str], network: str) -> dict[str, Any] | None:
    """The decoded ``PAYMENT-RESPONSE`` (or v1 ``X-PAYMENT-RESPONSE``), if there is one; its
    network is named as the payment's version names it."""
    for name, named in (("payment-response", network), ("x-payment-response", V1_NETWORK)):
        if name in headers:
            decoded: dict[str, Any] = json.loads(base64.b64decode(headers[name]))
            assert decoded["network"] == named, decoded
            return decoded
    return None


async def check(example: Example, paid: Paid) -> None:
    """The cell's promise: 200, the whole answer, settled, the balance down by the receipt."""
    name = paid.cell.name
    assert paid.error is None, f"{name}: the client failed: {paid.error}"
    assert paid.status == 200, f"{name}: {paid.status} {paid.body[:500]}"
    assert answer_text(paid.cell, paid.body) == ANSWER, f"{name}: not the whole answer"
    headers = paid.headers or {}
    async with httpx.AsyncClient() as client:
        response = await client.get(
            example.base + headers["x-payment-receipt"], params={"wait": 30}
        )
    receipt = response.json()
    assert (receipt["status"], receipt["scheme"]) == ("settled", paid.cell.scheme), receipt
    amount = int(receipt["amount"])
    assert amount > 0
    spent = paid.balance_before - example.balance(paid.payer.address)
    assert spent == amount, f"{name}: the payer paid {spent}, the receipt says {amount}"
    settled = settlement_header(headers, example.stack.network)
    if paid.cell.scheme == "exact":  # settled before it was sent, so the answer says how
        assert settled is not None, f"{name}: no PAYMENT-RESPONSE on a settled-first answer"
        assert settled["success"] is True
        assert settled["transaction"] == receipt["transaction"]
        assert settled["amount"] == receipt["amount"]
    else:  # served first, settled after: the receipt tells the outcome
        assert settled is None, f"{name}: PAYMENT-RESPONSE on an answer settled after it"


async def node_report(
    script: str, stack: LocalStack, base: str, cells: list[dict[str, Any]]
) -> dict[str, Any]:
    """Run one client's script over ``cells`` (name, path, body, privateKey) against the
    server at ``base``; the harness's report: each cell's outcome, and what was blocked."""
    job = {
        "base": base,
        "rpcUrl": stack.rpc_url,
        "chainId": stack.chain_id,
        "asset": {"address": stack.asset, "name": stack.asset_name},
        "cells": cells,
    }
    with anyio.fail_after(NODE_BOUND_SECONDS):
        finished = await anyio.run_process(
            ["node", str(CLIENTS_DIR / script)],
            input=json.dumps(job).encode(),
            cwd=ROOT,
            check=False,
        )
    assert finished.returncode == 0, finished.stderr.decode()[-3000:]
    report: dict[str, Any] = json.loads(finished.stdout.decode().strip().splitlines()[-1])
    return report


async def run_node(script: str, example: Example, paid: list[Paid]) -> list[str]:
    """Run one client's script over all its cells; fill in what it got; return what it
    tried to reach off this machine (nothing, if it behaves)."""
    cells = [
        {
            "name": p.cell.name,
            "path": p.cell.path,
            "body": p.cell.body,
            "privateKey": "0x" + bytes(p.payer.key).hex(),
        }
        for p in paid
    ]
    report = await node_report(script, example.stack, example.base, cells)
    for entry, result in zip(paid, report["cells"], strict=True):
        assert entry.cell.name == result["name"]
        entry.status = result.get("status")
        entry.body = result.get("body", "")
        entry.headers = result.get("headers")
        entry.error = result.get("error")
    blocked: list[str] = report["blocked"]
    return blocked


@needs_node
@pytest.mark.parametrize("client", sorted(NODE_CLIENTS))
async def test_a_typescript_client_pays_every_cell(interop_stack: LocalStack, client: str) -> None:
    script, cells = NODE_CLIENTS[client]
    async with serve_example("fastapi", interop_stack) as example:
        paid = prepare(example, cells)
        blocked = await run_node(script, example, paid)
        # First: a client that tried to reach a remote service fails for that reason.
        assert blocked == [], f"{client} tried to leave the machine: {blocked}"
        for entry in paid:
            await check(example, entry)


async def test_the_python_sdk_client_pays_every_cell(interop_stack: LocalStack) -> None:
    async with serve_example("fastapi", interop_stack) as example:
        paid = prepare(example, (UPTO_JSON, UPTO_STREAM, EXACT))
        for entry in paid:
            key = "0x" + bytes(entry.payer.key).hex()
            async with x402HttpxClient(sdk_client(interop_stack, key), timeout=60) as client:
                response = await client.post(example.base + entry.cell.path, json=entry.cell.body)
            entry.status, entry.body = response.status_code, response.text
            entry.headers = dict(response.headers)
        for entry in paid:
            await check(example, entry)
