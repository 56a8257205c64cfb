"""The FastAPI example's chat page, in headless Chromium, paying from the browser.

The page and the API are served on two origins (two uvicorn servers): the page pays the
API across origins with the official TypeScript client (``@x402/fetch`` + ``@x402/evm``,
bundled from npm), so CORS must let it send the payment and read the 402 and the receipt.
The server holds no key: the page signs with an anvil dev account it derives itself, or
through an injected wallet (``window.ethereum``) whose key stays in the driver. Where the
API offers sessions (the example's default on the local chain), the page pays by session
(``@x402/evm``'s batch-settlement client); the ``upto`` tests turn sessions off.

Debian's ``chromium`` is driven by the npm package ``playwright-core`` (no browser
download), through ``tests/examples/chat_page.cjs``. Outside CI the tests are skipped when
either is missing; in CI (``$CI`` set) they run and fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from eth_account import Account
from fastapi import FastAPI

from examples.common.upstream import PAYMENT_ANSWER, UpstreamResponse, stub_answer
from examples.fastapi_app.chat import SCRIPT, page_router
from tests.examples.conftest import fund, serve_example
from x402_meter.devstack import LocalStack
from x402_meter.devstack.accounts import dev_account
from x402_meter.devstack.asgi_server import serving
from x402_meter.devstack.stub_model import pieces, stream_chat

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("chat_page.cjs")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHAT_ACCOUNT = 9  # an anvil dev account no other test pays from; funded below
BROWSER_READY = (
    Path(CHROMIUM).is_file()
    and all((ROOT / "node_modules" / name).is_dir() for name in ("playwright-core", "esbuild"))
    and shutil.which("npm") is not None
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        not BROWSER_READY and not os.environ.get("CI"),
        reason="needs Debian's chromium and node_modules (npm ci)",
    ),
]


@pytest.fixture(scope="session")
def chat_script() -> Path:
    """The page's script, bundled from npm now, so that the test runs what the source says."""
    built = subprocess.run(
        ["npm", "run", "--silent", "build:chat"], cwd=ROOT, capture_output=True, check=False
    )
    assert built.returncode == 0, built.stderr.decode()
    return SCRIPT


class StoppableUpstream:
    """The stub model's stream, which stops after a few chunks and waits for the caller to
    hang up; ``closed`` is set when the stream was ended from outside (Stop)."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.sent: list[str] = []
        self.closed = anyio.Event()

    async def chat_completions(self, body: bytes) -> UpstreamResponse:
        request = json.loads(body)
        return UpstreamResponse(200, "text/event-stream", self._stream(request))

    async def _stream(self, request: dict[str, Any]) -> AsyncIterator[bytes]:
        answer = pieces(stub_answer(request))
        try:
            async for chunk in stream_chat(request, answer[: self.chunks]):
                if b'"finish_reason": "stop"' in chunk or b"[DONE]" in chunk:
                    break
                yield chunk
            self.sent = answer[: self.chunks]
            await anyio.Event().wait()  # the rest never comes: only the caller can end this
        finally:
            self.closed.set()

    async def aclose(self) -> None:
        return None


@asynccontextmanager
async def serve_page() -> AsyncIterator[str]:
    page = FastAPI()
    page.include_router(page_router())
    async with serving(page) as base:
        yield base


async def drive_the_page(plan: dict[str, Any]) -> dict[str, Any]:
    """Run the driver with ``plan``; ``plan["profile"]`` does not exist yet (a new one)."""
    done = await anyio.run_process(
        ["node", str(DRIVER), json.dumps(plan)],
        check=False,
        env={**os.environ, "CHROMIUM": CHROMIUM},
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def png_shape(path: Path) -> tuple[int, int, int]:
    """Width, height and size in bytes of a PNG file."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height, len(data)


async def test_the_page_pays_across_origins_from_a_dev_account_it_signs_with_itself(
    x402_local_stack: LocalStack, chat_script: Path, tmp_path: Path
) -> None:
    stack = x402_local_stack
    payer = dev_account(CHAT_ACCOUNT)
    fund(stack, payer.address)
    async with serve_page() as page_origin:  # noqa: SIM117 (the API needs the page's origin)
        async with serve_example(
            "fastapi", stack, rpc_url=stack.rpc_url, cors_origins=(page_origin,), sessions=False
        ) as api:
            seller_before, payer_before = api.balance(api.seller), api.balance(payer.address)
            page = await drive_the_page(
                {
                    "url": f"{page_origin}/chat?api={api.base}",
                    "screenshot": str(tmp_path / "chat.png"),
                    "profile": str(tmp_path / "profile"),
                    "wallet": f"dev:{CHAT_ACCOUNT}",
                    "turns": [
                        {"plan": "local-stub:token", "question": "What is x402, in two sentences?"},
                        {"plan": "local-stub-pro:flat", "question": "And how is it paid for?"},
                    ],
                }
            )
            seller_after, payer_after = api.balance(api.seller), api.balance(payer.address)

    assert page["errors"] == []
    assert sorted(page["origins"]) == sorted([page_origin, api.base, stack.rpc_url.rstrip("/")])
    assert page["wallets"] == [f"dev:{i}" for i in range(10)]
    assert page["address"] == payer.address
    assert "PUBLIC key" in page["walletLabel"]
    assert int(page["balance"]) == payer_before
    assert page["options"] == [
        "local-stub — 0.000002 USDC / token",
        "local-stub-pro — 0.000008 USDC / token",
        "local-stub — 0.001 USDC / answer",
        "local-stub-pro — 0.004 USDC / answer",
    ]
    assert page["answers"] == [
        stub_answer({"messages": [{"role": "user", "content": "What is x402?"}]}),
        PAYMENT_ANSWER,
    ]
    per_token, flat = page["cards"]
    assert (per_token["status"], flat["status"]) == ("settled", "settled")
    assert int(per_token["amount"]) == int(per_token["tokens"]) * 2  # 0.000002 USDC a token
    assert int(flat["amount"]) == 4000  # 0.004 USDC
    assert per_token["transaction"] != flat["transaction"]
    total = int(per_token["amount"]) + int(flat["amount"])
    assert page["spent"] == f"Spent {Decimal(total).scaleb(-6).normalize():f} USDC · 2 answers"
    assert payer_before - payer_after == total == seller_after - seller_before
    assert int(page["balanceAfter"]) == payer_after

    width, height, size = png_shape(tmp_path / "chat.png")
    assert width == 1100
    assert height >= 820
    assert size > 30_000  # a rendered page, not a blank one


async def test_stop_ends_the_stream_and_an_injected_wallet_pays_only_what_was_served(
    x402_local_stack: LocalStack, chat_script: Path, tmp_path: Path
) -> None:
    stack = x402_local_stack
    wallet = Account.create()  # a wallet extension's key: never in the page, never on a server
    fund(stack, wallet.address)
    upstream = StoppableUpstream(chunks=6)
    question = "Tell me a story"
    served = "".join(pieces(stub_answer({"messages": [{"role": "user", "content": question}]}))[:6])
    async with serve_page() as page_origin:  # noqa: SIM117
        async with serve_example(
            "fastapi", stack, upstream=upstream, cors_origins=(page_origin,), sessions=False
        ) as api:
            seller_before, payer_before = api.balance(api.seller), api.balance(wallet.address)
            page = await drive_the_page(
                {
                    "url": f"{page_origin}/chat?api={api.base}",
                    "screenshot": str(tmp_path / "stopped.png"),
                    "profile": str(tmp_path / "profile"),
                    "wallet": "injected",
                    "injected": {
                        "privateKey": "0x" + bytes(wallet.key).hex(),
                        "rpcUrl": stack.rpc_url,
                    },
                    "turns": [
                        {"plan": "local-stub:token", "question": question, "stopAfter": served}
                    ],
                }
            )
            with anyio.fail_after(30):  # a guard against a hang, not a timing assertion
                await upstream.closed.wait()
            seller_after, payer_after = api.balance(api.seller), api.balance(wallet.address)

    assert page["errors"] == []
    assert page["wallets"][0] == "injected"
    assert page["address"] == wallet.address
    assert page["signatures"] == ["PermitWitnessTransferFrom"]  # signed by the wallet, once
    assert int(page["balance"]) == payer_before  # read through the wallet: no RPC URL given
    assert page["answers"] == ["".join(upstream.sent)] == [served]
    assert page["statuses"][0].startswith("Stopped: charged for what was served.")
    (card,) = page["cards"]
    assert card["stopped"] == "true"
    assert card["status"] == "settled"
    assert 0 < int(card["outputTokens"]) < 4096
    assert int(card["amount"]) == int(card["tokens"]) * 2  # 0.000002 USDC a token served
    assert int(card["amount"]) < int(card["maxAmount"])
    assert payer_before - payer_after == int(card["amount"]) == seller_after - seller_before
    assert int(page["balanceAfter"]) == payer_after


async def test_the_page_pays_by_session_one_deposit_then_vouchers_a_top_up_and_a_refund(
    x402_local_stack: LocalStack, chat_script: Path, tmp_path: Path
) -> None:
    """Three answers on one deposit, the balance going down by each answer's cost; a top-up
    goes with the fourth answer's payment; the refund returns the rest: what left the payer
    is exactly what the cost cards say, and no voucher needed a corrective 402 (the page
    reads each streamed answer's charge from its receipt)."""
    stack = x402_local_stack
    payer = dev_account(CHAT_ACCOUNT)
    fund(stack, payer.address)
    ask = {"plan": "local-stub:token"}
    async with serve_page() as page_origin:  # noqa: SIM117
        async with serve_example(
            "fastapi", stack, rpc_url=stack.rpc_url, cors_origins=(page_origin,)
        ) as api:
            payer_before = api.balance(payer.address)
            page = await drive_the_page(
                {
                    "url": f"{page_origin}/chat?api={api.base}",
                    "screenshot": str(tmp_path / "session.png"),
                    "profile": str(tmp_path / "profile"),
                    "wallet": f"dev:{CHAT_ACCOUNT}",
                    "turns": [
                        {**ask, "question": "What is x402?"},
                        {**ask, "question": "What is a payment channel?"},
                        {**ask, "question": "And a voucher?"},
                        {"action": "topUp"},
                        {**ask, "question": "What does a top-up do?"},
                        {"action": "refund"},
                    ],
                }
            )
            payer_after = api.balance(payer.address)

    assert page["errors"] == []
    cards = page["cards"]
    assert [c["scheme"] for c in cards] == ["batch-settlement"] * 4
    assert [c["status"] for c in cards] == ["settled"] * 4
    # The first answer and the one after the top-up deposited: their cards name the deposit;
    # the others were paid by voucher, with no transaction of their own.
    transactions = [c["transaction"] for c in cards]
    assert transactions[1:3] == ["", ""]
    assert all(t.startswith("0x") and len(t) == 66 for t in (transactions[0], transactions[3]))
    assert transactions[0] != transactions[3]
    costs = [int(c["amount"]) for c in cards]
    assert costs == [int(c["tokens"]) * 2 for c in cards]  # 0.000002 USDC a token
    assert all(cost > 0 for cost in costs)

    first, second, third, top_up, fourth, refunded = page["steps"]
    deposit = int(first["deposited"])
    assert deposit > 0
    assert first["shown"]
    assert first["channel"]
    for step, answered in ((first, 1), (second, 2), (third, 3)):
        spent = sum(costs[:answered])
        assert (int(step["deposited"]), int(step["spent"])) == (deposit, spent)
        assert int(step["remaining"]) == deposit - spent
    assert "top-up" in top_up["note"]
    assert int(fourth["deposited"]) > deposit  # the top-up landed with the fourth answer
    assert int(fourth["spent"]) == sum(costs)
    assert int(fourth["remaining"]) == int(fourth["deposited"]) - sum(costs)
    assert refunded["note"].startswith("Refunded")
    assert int(refunded["refunded"]) == int(fourth["remaining"])
    # after the refund the bar still says what went in, what was spent, what came back
    assert int(refunded["deposited"]) == int(fourth["deposited"])
    assert int(refunded["spent"]) == sum(costs)
    assert int(refunded["refundedShown"]) == int(fourth["deposited"]) - sum(costs)
    assert int(refunded["remaining"]) == 0
    assert [s["refundedShown"] for s in (first, second, third, fourth)] == ["0"] * 4

    # Every answer: the unpaid request's 402, then the paid one; no corrective 402. Then the
    # refund: the SDK's GET probe (402), then its refund voucher (200).
    chat = [(e["method"], e["status"]) for e in page["exchanges"]]
    assert chat == [("POST", 402), ("POST", 200)] * 4 + [("GET", 402), ("GET", 200)]
    assert payer_before - payer_after == sum(costs)  # the rest came back, to the unit
    assert int(page["balanceAfter"]) == payer_after


async def test_stop_on_a_session_charges_what_was_served_and_an_injected_wallet_signs_it(
    x402_local_stack: LocalStack, chat_script: Path, tmp_path: Path
) -> None:
    """A browser wallet pays by session (it signs the deposit's authorization and the
    vouchers, nothing else); Stop mid-stream: the session is charged what was served, the
    next answer is paid by voucher from that charge (no corrective 402), and the refund
    leaves the wallet out exactly the two cards' charges."""
    stack = x402_local_stack
    wallet = Account.create()
    fund(stack, wallet.address)
    upstream = StoppableUpstream(chunks=6)
    question = "Tell me a story"
    served = "".join(pieces(stub_answer({"messages": [{"role": "user", "content": question}]}))[:6])
    async with serve_page() as page_origin:  # noqa: SIM117
        async with serve_example(
            "fastapi", stack, upstream=upstream, cors_origins=(page_origin,)
        ) as api:
            payer_before = api.balance(wallet.address)
            page = await drive_the_page(
                {
                    "url": f"{page_origin}/chat?api={api.base}",
                    "screenshot": str(tmp_path / "stopped-session.png"),
                    "profile": str(tmp_path / "profile"),
                    "wallet": "injected",
                    "injected": {
                        "privateKey": "0x" + bytes(wallet.key).hex(),
                        "rpcUrl": stack.rpc_url,
                    },
                    "turns": [
                        {"plan": "local-stub:token", "question": question, "stopAfter": served},
                        {"plan": "local-stub-pro:token", "question": "Go on", "stopAfter": served},
                        {"action": "refund"},
                    ],
                }
            )
            payer_after = api.balance(wallet.address)

    assert page["errors"] == []
    # the deposit's EIP-3009 authorization and its voucher, the second answer's voucher,
    # the refund's (a voucher for what was charged)
    assert page["signatures"] == ["ReceiveWithAuthorization", "Voucher", "Voucher", "Voucher"]
    first, second = page["cards"]
    assert (first["stopped"], first["scheme"], first["status"]) == (
        "true",
        "batch-settlement",
        "settled",
    )
    assert int(first["amount"]) == int(first["tokens"]) * 2  # only what was served
    assert int(second["amount"]) == int(second["tokens"]) * 8  # the pro model's price
    after_first, after_second, refunded = page["steps"]
    assert int(after_first["spent"]) == int(first["amount"])
    assert int(after_second["spent"]) == int(first["amount"]) + int(second["amount"])
    chat = [(e["method"], e["status"]) for e in page["exchanges"]]
    assert chat == [("POST", 402), ("POST", 200)] * 2 + [("GET", 402), ("GET", 200)]
    assert refunded["note"].startswith("Refunded")
    assert payer_before - payer_after == int(first["amount"]) + int(second["amount"])
