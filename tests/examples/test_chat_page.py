"""The FastAPI example's chat page, in headless Chromium, paying on the real local stack.

Debian's ``chromium`` is driven by the npm package ``playwright-core`` (no browser download),
through ``tests/examples/chat_page.cjs``. Outside CI the test is skipped when either is
missing; in CI (``$CI`` set) it runs and fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from examples.common.upstream import PAYMENT_ANSWER, stub_answer
from tests.examples.conftest import Example, fund, serve_example
from x402_meter.devstack import LocalStack
from x402_meter.devstack.accounts import dev_account

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("chat_page.cjs")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHAT_ACCOUNT = 9  # an anvil dev account no other test pays from; funded below
BROWSER_READY = (
    Path(CHROMIUM).is_file()
    and (ROOT / "node_modules" / "playwright-core").is_dir()
    and shutil.which("node") is not None
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        not BROWSER_READY and not os.environ.get("CI"),
        reason="needs Debian's chromium and node_modules/playwright-core (npm ci)",
    ),
]


@pytest.fixture
async def chat(x402_local_stack: LocalStack) -> AsyncIterator[Example]:
    fund(x402_local_stack, dev_account(CHAT_ACCOUNT).address)
    async with serve_example(
        "fastapi", x402_local_stack, chat_dev_account=CHAT_ACCOUNT, rpc_url=x402_local_stack.rpc_url
    ) as example:
        yield example


async def drive_the_page(base: str, screenshot: Path, profile: Path) -> dict[str, Any]:
    """Run the driver; ``profile`` does not exist yet: Chromium starts with a new one."""
    done = await anyio.run_process(
        ["node", str(DRIVER), base, str(screenshot), str(profile)],
        check=False,
        env={**os.environ, "CHROMIUM": CHROMIUM},
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


async def test_the_chat_page_streams_paid_answers_with_their_cost_and_the_running_spend(
    chat: Example, tmp_path: Path
) -> None:
    seller_before = chat.balance(chat.seller)
    screenshot = tmp_path / "chat.png"

    page = await drive_the_page(chat.base, screenshot, tmp_path / "profile")

    assert page["errors"] == []
    assert page["wallet"] == dev_account(CHAT_ACCOUNT).address
    assert "well-known public key" in page["walletLabel"]
    assert [o["text"] for o in page["options"]] == [
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
    assert Decimal(per_token["amount"]) == per_token["tokens"] * Decimal("0.000002")
    assert Decimal(flat["amount"]) == Decimal("0.004")
    assert per_token["transaction"] != flat["transaction"]
    total = Decimal(per_token["amount"]) + Decimal(flat["amount"])
    assert page["spent"] == f"Spent {total.normalize():f} USDC · 2 answers"
    assert chat.balance(chat.seller) - seller_before == int(total.scaleb(6))

    width, height, size = png_shape(screenshot)
    assert width == 1100
    assert height >= 820
    assert size > 30_000  # a rendered page, not a blank one
