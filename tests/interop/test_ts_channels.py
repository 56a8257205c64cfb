"""The official TypeScript client pays over payment channels on the local stack.

``@x402/evm``'s batch-settlement client (in ``@x402/fetch``, one node process, the versions
pinned in package.json) pays the SDK's Python resource server (tests/channel_seller.py)
through the bundled facilitator: its first request deposits (EIP-3009 or Permit2), the next
ones pay by voucher with no facilitator call, and the seller claims and sweeps its vouchers
on chain. Balances of payer, contract and payTo are checked to the atomic unit. The node
process may not reach anything off this machine (the harness refuses it).
"""

from __future__ import annotations

import json
from typing import Any, Final

import pytest
from eth_account.signers.local import LocalAccount
from x402.http.utils import decode_payment_response_header

from tests.channel_seller import PRICE, Balances, ChannelSeller, channel_seller
from tests.examples.conftest import new_funded_payer
from tests.interop.test_clients_pay import needs_node, node_report
from x402_meter.devstack import LocalStack

pytestmark = [pytest.mark.anyio, needs_node]

REQUESTS: Final = 4
DEPOSIT: Final = 10 * PRICE  # the seller's minDeposit, which the client deposits


async def pay_with_node(
    stack: LocalStack, seller: ChannelSeller, payer: LocalAccount, method: str
) -> dict[str, Any]:
    """REQUESTS paid GETs by one TypeScript client; the harness's report."""
    path = seller.url(method).removeprefix(seller.base)
    key = "0x" + bytes(payer.key).hex()
    cells = [
        {"name": f"{method} #{n}", "path": path, "body": None, "privateKey": key}
        for n in range(REQUESTS)
    ]
    return await node_report("channels.mjs", stack, seller.base, cells)


@pytest.mark.parametrize("method", ["eip3009", "permit2"])
async def test_the_typescript_client_deposits_once_then_pays_by_voucher(
    interop_stack: LocalStack, method: str
) -> None:
    stack = interop_stack
    payer = new_funded_payer(stack)
    async with channel_seller(stack) as seller:
        start = Balances.read(stack, payer.address, seller.pay_to)

        report = await pay_with_node(stack, seller, payer, method)

        assert report["blocked"] == [], f"the client tried to leave the machine: {report}"
        cells = report["cells"]
        assert [c.get("error") for c in cells] == [None] * REQUESTS, cells
        assert [(c["status"], json.loads(c["body"])) for c in cells] == [
            (200, {"answer": "paid"})
        ] * REQUESTS
        settled = [decode_payment_response_header(c["headers"]["payment-response"]) for c in cells]
        assert all(s.success for s in settled)
        assert settled[0].transaction.startswith("0x")  # the deposit
        assert [s.transaction for s in settled[1:]] == [""] * (REQUESTS - 1)  # vouchers
        assert seller.facilitator_calls == ["/verify", "/settle"]  # none for a voucher
        (channel,) = seller.scheme.get_storage().list()
        assert seller.charged(channel.channel_id) == REQUESTS * PRICE
        deposited = start.moved(payer=-DEPOSIT, contract=DEPOSIT)
        assert Balances.read(stack, payer.address, seller.pay_to) == deposited

        claims = await seller.manager.claim()
        await seller.manager.settle()

        assert [c.vouchers for c in claims] == [1]
        earned = REQUESTS * PRICE
        assert Balances.read(stack, payer.address, seller.pay_to) == deposited.moved(
            contract=-earned, pay_to=earned
        )
