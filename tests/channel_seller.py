"""A batch-settlement seller and payers built from the x402 SDK's own pieces, for the channel tests.

The seller is the SDK's resource server with its server-side ``batch-settlement`` scheme,
behind the SDK's FastAPI payment middleware, served by uvicorn on the local stack; it
reaches the stack's facilitator over HTTP with the stack's API key, and every request it
sends there is recorded, so a test can prove that a voucher cost no facilitator call. Its
channel manager (the SDK's, too) claims, sweeps and refunds through the same facilitator.
The payers are the SDK's client scheme in the SDK's httpx client, signing with keys that
can read the chain (as the SDK's channel recovery needs).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from fastapi import FastAPI, Request, Response
from x402 import x402Client, x402ResourceServer
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.http.clients import x402HttpxClient
from x402.http.middleware.fastapi import payment_middleware
from x402.http.utils import decode_payment_response_header
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme as PayerScheme
from x402.mechanisms.evm.batch_settlement.server import (
    BatchSettlementChannelManager,
    BatchSettlementEvmScheme,
    ChannelManagerConfig,
)
from x402.mechanisms.evm.signers import EthAccountSignerWithRPC

from x402_meter.devstack import LocalStack, token_balance
from x402_meter.devstack.asgi_server import serving
from x402_meter.facilitator import bearer_auth_provider

PRICE: Final = 1_000
"""Atomic units per paid request (0.001 test USDC)."""
ROUTES: Final = {"eip3009": "/eip3009", "permit2": "/permit2"}
"""One paid route per deposit method (the ``assetTransferMethod`` of its offer)."""


@dataclass
class ChannelSeller:
    """A running seller: where it is, its SDK scheme and channel manager, and its calls."""

    base: str
    pay_to: str
    scheme: BatchSettlementEvmScheme
    manager: BatchSettlementChannelManager
    facilitator_calls: list[str] = field(default_factory=list)
    """The path of every request the seller sent to the facilitator, in order."""
    settle_answers: list[dict[str, Any]] = field(default_factory=list)
    """The body of every ``/settle`` answer the facilitator gave the seller, in order."""

    def url(self, method: str = "eip3009") -> str:
        return f"{self.base}{ROUTES[method]}"

    def charged(self, channel_id: str) -> int:
        """What the seller has charged on ``channel_id`` so far (its own record)."""
        channel = self.scheme.get_storage().get(channel_id)
        assert channel is not None, f"the seller knows no channel {channel_id}"
        return int(channel.charged_cumulative_amount)


def offer(stack: LocalStack, pay_to: str, method: str) -> dict[str, Any]:
    """The route's payment option: PRICE of the stack's token, deposits by ``method``."""
    extra = {
        "name": stack.asset_name,
        "version": stack.asset_version,
        "assetTransferMethod": method,
    }
    price = {"amount": str(PRICE), "asset": stack.asset, "extra": extra}
    return {"scheme": "batch-settlement", "payTo": pay_to, "network": stack.network, "price": price}


@asynccontextmanager
async def channel_seller(stack: LocalStack) -> AsyncIterator[ChannelSeller]:
    """Serve a new seller (a fresh ``payTo``, so its balance moves only by what it is paid).

    It has no receiver-authorizer key of its own: its channels name the facilitator's
    advertised ``receiverAuthorizer``, which signs its claims and refunds.
    """
    pay_to = Account.create().address
    calls: list[str] = []
    settle_answers: list[dict[str, Any]] = []

    async def record(request: httpx.Request) -> None:
        calls.append(request.url.path)

    async def record_settlement(response: httpx.Response) -> None:
        if response.request.url.path == "/settle":
            settle_answers.append(json.loads(await response.aread()))

    hooks: dict[str, list[Callable[..., Any]]] = {
        "request": [record],
        "response": [record_settlement],
    }
    async with httpx.AsyncClient(timeout=60, event_hooks=hooks) as http:
        facilitator = HTTPFacilitatorClient(
            FacilitatorConfig(
                url=stack.facilitator_url,
                timeout=60,
                auth_provider=bearer_auth_provider(stack.facilitator_api_key),
                http_client=http,
            )
        )
        scheme = BatchSettlementEvmScheme(pay_to)
        # The SDK's own scheme, typed more loosely than the protocol it implements:
        server = x402ResourceServer(facilitator).register(stack.network, scheme)  # type: ignore[arg-type]
        routes = {
            f"GET {path}": {"accepts": offer(stack, pay_to, method)}
            for method, path in ROUTES.items()
        }
        charge = payment_middleware(routes, server)  # type: ignore[arg-type]
        app = FastAPI()

        @app.middleware("http")
        async def pay(request: Request, call_next: Any) -> Response:
            return await charge(request, call_next)

        for path in ROUTES.values():
            app.add_api_route(path, answer, methods=["GET"])

        manager = BatchSettlementChannelManager(
            ChannelManagerConfig(
                scheme=scheme,
                facilitator=facilitator,
                receiver=pay_to,
                token=stack.asset,
                network=stack.network,
            )
        )
        async with serving(app) as base:
            yield ChannelSeller(base, pay_to, scheme, manager, calls, settle_answers)


async def answer() -> dict[str, str]:
    return {"answer": "paid"}


def payer_scheme(stack: LocalStack, account: LocalAccount) -> PayerScheme:
    """The SDK's batch-settlement client scheme for ``account``, reading the stack's chain."""
    return PayerScheme(EthAccountSignerWithRPC(account, stack.rpc_url))


async def pay(
    stack: LocalStack,
    seller: ChannelSeller,
    payer: LocalAccount,
    times: int,
    method: str = "eip3009",
) -> list[dict[str, Any]]:
    """``times`` paid requests by ``payer``; each answer's decoded PAYMENT-RESPONSE."""
    settlements = []
    client = payer_client(stack, payer_scheme(stack, payer))
    async with x402HttpxClient(client, timeout=60) as http:
        for _ in range(times):
            response = await http.get(seller.url(method))
            assert response.status_code == 200, response.text
            assert response.json() == {"answer": "paid"}
            settlement = decode_payment_response_header(response.headers["payment-response"])
            assert settlement.success, settlement
            settlements.append(settlement.model_dump(by_alias=True))
    return settlements


def payer_client(stack: LocalStack, scheme: PayerScheme) -> x402Client:
    """An SDK client paying with ``scheme``, allowed to spend the local test token."""
    client = x402Client().register(stack.network, scheme)
    client.set_spend_controls(
        {"allowed_assets": [{"network": stack.network, "asset": stack.asset}]}
    )
    return client


@dataclass(frozen=True)
class Balances:
    """Token balances of a payer, the batch-settlement contract and a payee."""

    payer: int
    contract: int
    pay_to: int

    @classmethod
    def read(cls, stack: LocalStack, payer: str, pay_to: str) -> Balances:
        w3 = stack.web3()
        return cls(
            token_balance(w3, stack.asset, payer),
            token_balance(w3, stack.asset, stack.batch_settlement),
            token_balance(w3, stack.asset, pay_to),
        )

    def moved(self, *, payer: int = 0, contract: int = 0, pay_to: int = 0) -> Balances:
        """These balances changed by the given signed amounts."""
        return Balances(self.payer + payer, self.contract + contract, self.pay_to + pay_to)
