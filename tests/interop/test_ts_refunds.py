"""The official TypeScript client takes the rest of its session back from X402Meter.

``@x402/evm``'s batch-settlement client (in ``@x402/fetch``, one node process) pays two chat
answers through X402Meter (a ``POST``-only route; the first deposits), then calls its
``refund(url)``: a ``GET`` probe of the route, then its refund payload. The meter claims
what it charged and refunds the rest in one transaction; balances of payer and ``payTo``
are checked on chain to the atomic unit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.channel_seller import Balances
from tests.examples.conftest import new_funded_payer
from tests.interop.test_clients_pay import needs_node, node_report
from tests.test_session_refunds import minimum_deposit, swept
from tests.test_sessions_sdk import CHAT, QUESTION, seller, usage_cost
from x402_meter.devstack import LocalStack

pytestmark = [pytest.mark.anyio, needs_node]


async def test_the_typescript_clients_refund_returns_the_rest(
    interop_stack: LocalStack, tmp_path: Path
) -> None:
    stack = interop_stack
    payer = new_funded_payer(stack)
    key = "0x" + bytes(payer.key).hex()
    async with seller(stack, tmp_path) as shop:
        deposit = await minimum_deposit(shop)
        start = Balances.read(stack, payer.address, shop.pay_to)
        cells: list[dict[str, Any]] = [
            {"name": "answer #1", "path": CHAT, "body": QUESTION, "privateKey": key},
            {"name": "answer #2", "path": CHAT, "body": QUESTION, "privateKey": key},
            {"name": "refund", "path": CHAT, "body": None, "privateKey": key, "refund": True},
        ]

        report = await node_report("channel_refunds.mjs", stack, shop.base, cells)
        await swept(shop)

        assert report["blocked"] == [], f"the client tried to leave the machine: {report}"
        results = report["cells"]
        assert [c.get("error") for c in results] == [None] * 3, results
        assert [c["status"] for c in results] == [200] * 3
        charged = sum(usage_cost(json.loads(c["body"])["usage"]) for c in results[:2])
        settled = json.loads(results[2]["body"])
        assert settled["success"] is True
        assert int(settled["amount"]) == deposit - charged
        (record,) = await shop.channels.list()
        assert (record.charged, record.claimed, record.refunded) == (
            charged,
            charged,
            deposit - charged,
        )
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=-charged, pay_to=charged
        )
