"""Cooperative refunds of sessions in a Litestar app: the official Python SDK client's
``refund(url)`` against ``X402MeterPlugin`` on the local chain.

Litestar routes before its middleware runs, so the SDK client's ``GET`` probe of a
``POST``-only chat handler would be answered 405 by its router. The plugin puts the meter's
refund door in front of the router (at startup): the probe gets the 402 offering a session,
the refund is the meter's, and the app keeps everything else.

Everything is real: a Litestar app with the plugin in uvicorn (with lifespan), the bundled
facilitator over HTTP, the stub model, the contracts on anvil. Balances are read from the
chain to the atomic unit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from litestar import Litestar, Request, get, post
from litestar.response import Stream
from litestar.testing import TestClient
from x402.http import decode_payment_required_header
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.batch_settlement.errors import ERR_INVALID_VOUCHER_SIGNATURE
from x402.schemas import PaymentRequirements

from tests.apps import meter_options
from tests.channel_seller import Balances, payer_client, payer_scheme
from tests.examples.conftest import new_funded_payer
from tests.gateway.test_gateway_sessions import forged_refund
from tests.test_session_refunds import refund
from tests.test_sessions_sdk import CHAT, QUESTION, QUIET_CLAIMS, STREAMED
from x402_meter.devstack import LocalStack
from x402_meter.devstack.asgi_server import serving
from x402_meter.devstack.stub_model import complete_chat, stream_chat
from x402_meter.integrations.litestar import RefundsBeforeRouting, X402MeterPlugin
from x402_meter.store import SQLiteStore

pytestmark = pytest.mark.anyio

MODELS = "/v1/models"


@dataclass
class LitestarSeller:
    base: str
    pay_to: str
    plugin: X402MeterPlugin
    chats: list[str]
    """The method of each request the chat handler ran."""


@asynccontextmanager
async def litestar_seller(stack: LocalStack, tmp_path: Path) -> AsyncIterator[LitestarSeller]:
    """The stub model as a ``POST``-only Litestar handler, metered by the plugin offering
    sessions, and a free ``GET`` handler beside it; served by uvicorn."""
    pay_to = Account.create().address
    chats: list[str] = []

    @post(CHAT, status_code=200)
    async def chat(request: Request[Any, Any, Any]) -> Stream | dict[str, Any]:
        chats.append(request.method)
        body = await request.json()
        if body.get("stream"):
            return Stream(stream_chat(body), media_type="text/event-stream")
        return complete_chat(body)

    @get(MODELS, sync_to_thread=False)
    def models() -> dict[str, Any]:
        return {"object": "list", "data": []}

    plugin = X402MeterPlugin(
        **meter_options(
            stack,
            pay_to=pay_to,
            schemes=("upto", "batch-settlement"),
            store=SQLiteStore(tmp_path / "ledger.db"),
            **QUIET_CLAIMS,
        )
    )
    app = Litestar(route_handlers=[chat, models], plugins=[plugin])
    async with serving(app) as base:
        yield LitestarSeller(base, pay_to, plugin, chats)


async def test_the_sdk_clients_refund_of_a_litestar_session_returns_exactly_the_rest(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """A JSON answer opens the channel, a streamed one follows; the SDK client's
    ``refund(url)`` (a GET probe of the POST-only handler, then its refund voucher, behind
    the streamed charge: one corrective 402) returns the rest. On chain the payer is out
    exactly what the receipts charged. The handler ran for the two chats only; other
    methods, a malformed payment and other paths are still Litestar's (405, and the free
    GET's 200), and a refund signed by someone else is refused and moves nothing."""
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    async with litestar_seller(stack, tmp_path) as shop:
        url = f"{shop.base}{CHAT}"
        start = Balances.read(stack, payer.address, shop.pay_to)
        scheme = payer_scheme(stack, payer)
        client = payer_client(stack, scheme)
        async with x402HttpxClient(client, timeout=60, base_url=shop.base) as http:
            answers = [await http.post(CHAT, json=QUESTION), await http.post(CHAT, json=STREAMED)]
            assert [a.status_code for a in answers] == [200, 200], answers[-1].text
            receipts = [(await http.get(a.headers["x-payment-receipt"])).json() for a in answers]
        assert all(r["status"] == "settled" for r in receipts), receipts
        charged = sum(int(r["amount"]) for r in receipts)
        deposit = start.payer - Balances.read(stack, payer.address, shop.pay_to).payer

        async with httpx.AsyncClient(timeout=60) as plain:
            probe = await plain.get(url)
            other = await plain.put(url, json=QUESTION)
            free = await plain.get(f"{shop.base}{MODELS}")
            malformed = await plain.get(url, headers={"PAYMENT-SIGNATURE": "bm90IGpzb24"})
            (offer,) = decode_payment_required_header(probe.headers["payment-required"]).accepts
            assert isinstance(offer, PaymentRequirements)
            stranger = forged_refund(stack, payer, offer)
            forged = await plain.put(url, json=QUESTION, headers=stranger)
        assert probe.status_code == 402, probe.text
        assert offer.scheme == "batch-settlement"
        assert (other.status_code, free.status_code, malformed.status_code) == (405, 200, 405)
        assert forged.status_code == 402, forged.text
        assert forged.json()["reason"] == ERR_INVALID_VOUCHER_SIGNATURE
        assert Balances.read(stack, payer.address, shop.pay_to).payer == start.payer - deposit

        settled = await refund(scheme, url)

        assert settled.success, settled
        assert int(settled.amount or "") == deposit - charged > 0
        assert Balances.read(stack, payer.address, shop.pay_to).payer == start.payer - charged
        assert shop.chats == ["POST", "POST"]


@pytest.mark.parametrize("sessions", [True, False])
def test_the_refund_door_is_put_in_front_of_the_router_once_and_only_with_sessions(
    sessions: bool,
) -> None:
    """Started twice (as test clients do), the app's handler is wrapped once; without
    sessions there are no refunds to take, and Litestar's handler stays as it was."""
    plugin = X402MeterPlugin(
        pay_to=Account.create().address,
        price_per_token="0.000001",
        facilitator_url="http://127.0.0.1:9",
        routes=[f"POST {CHAT}"],
        schemes=("upto", "batch-settlement") if sessions else ("upto",),
    )
    app = Litestar(route_handlers=[], plugins=[plugin])
    router = app.asgi_handler
    for _ in range(2):
        with TestClient(app):
            pass
    if sessions:
        assert isinstance(app.asgi_handler, RefundsBeforeRouting)
        assert app.asgi_handler.handler is router
    else:
        assert app.asgi_handler is router
