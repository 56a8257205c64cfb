"""Sessions through the gateway, paid by x402-meter's own paying client with the ``openai``
package: ``x402-meter gateway`` (a real uvicorn process) offering ``batch-settlement`` from
its config, before the stub upstream, on the local chain.

The first answer deposits, every later one is paid by a voucher signed from what the
gateway charged (a streamed answer's charge read from its receipt): no payment is refused,
and the channel is charged exactly what the receipts say. ``close_sessions()`` takes the
rest back through the gateway (the meter answers the refund's probe and the refund).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import openai
import pytest
from eth_account.signers.local import LocalAccount

from tests.channel_seller import Balances
from tests.gateway.harness import StubUpstream, gateway_process
from tests.gateway.test_gateway_sessions import sessions_config
from tests.test_client_sessions import PaidAnswers, ask_streamed_async, deposits
from x402_meter import Asset
from x402_meter.client import PayingAsyncClient
from x402_meter.devstack import LocalStack

pytestmark = pytest.mark.anyio

ANSWERS: Final = 6


async def test_the_paying_client_pays_a_gateway_session_exactly(
    x402_local_stack: LocalStack,
    upstream: StubUpstream,
    payer: LocalAccount,
    tmp_path: Path,
) -> None:
    """Six streamed answers: one deposit, no refusal, and the channel in the gateway's store
    charged exactly what the receipts say; nothing moved on chain but the deposit."""
    stack = x402_local_stack
    with gateway_process(stack, tmp_path, sessions_config(upstream.url)) as gateway:
        start = Balances.read(stack, payer.address, gateway.seller)
        paid = PaidAnswers()
        async with session_client(stack, payer, paid) as http:
            llm = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x402", http_client=http)
            costs = [await ask_streamed_async(llm, model="local-stub") for _ in range(ANSWERS)]
            (balance,) = await http.balance()

        assert paid.refusals == []
        (deposit,) = deposits(http.payments)
        receipts = [p.receipt for p in http.payments]
        assert all(r is not None and r.status == "settled" for r in receipts)
        charged = sum(r.amount or 0 for r in receipts if r is not None)
        assert len(costs) == ANSWERS
        assert (balance.deposited, balance.charged) == (deposit, charged)
        assert Balances.read(stack, payer.address, gateway.seller) == start.moved(
            payer=-deposit, contract=deposit
        )


async def test_the_paying_client_takes_the_rest_of_a_gateway_session_back(
    x402_local_stack: LocalStack,
    upstream: StubUpstream,
    payer: LocalAccount,
    tmp_path: Path,
) -> None:
    """Two answers, then ``close_sessions()``: its refund (a GET probe of the POST-only chat
    path, then the refund voucher) is the meter's; the payer gets back exactly the deposit
    less the charges, on chain, and the upstream saw nothing but the two chats."""
    stack = x402_local_stack
    upstream.clear()
    with gateway_process(stack, tmp_path, sessions_config(upstream.url)) as gateway:
        start = Balances.read(stack, payer.address, gateway.seller)
        async with session_client(stack, payer, PaidAnswers()) as http:
            llm = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x402", http_client=http)
            for _ in range(2):
                await ask_streamed_async(llm, model="local-stub")
            (refund,) = await http.close_sessions()

        (deposit,) = deposits(http.payments)
        charged = sum(p.receipt.amount or 0 for p in http.payments if p.receipt is not None)
        assert charged > 0
        assert refund.amount == deposit - charged
        assert Balances.read(stack, payer.address, gateway.seller).payer == start.payer - charged
    assert [r["path"] for r in upstream.requests()] == ["/v1/chat/completions"] * 2


def session_client(stack: LocalStack, payer: LocalAccount, paid: PaidAnswers) -> PayingAsyncClient:
    asset = Asset(stack.asset, stack.asset_name, stack.asset_version, stack.asset_decimals)
    return PayingAsyncClient(
        payer.key.hex(),
        network=stack.network,
        asset=asset,
        schemes=("batch-settlement", "upto"),
        transport=paid,
    )
