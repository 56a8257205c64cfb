"""The examples, served for real: local chain, facilitator over HTTP, uvicorn, fresh accounts.

Every test gets a payer and a seller of its own (new keys, funded here), so balances move
only by what the test itself pays, whatever else ran on the shared chain before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from x402.mechanisms.evm.constants import PERMIT2_ADDRESS

from examples.common.settings import Settings
from examples.common.upstream import Upstream
from examples.fastapi_app.app import create_app as create_fastapi_app
from examples.litestar_app.app import create_app as create_litestar_app
from x402_meter import Asset, MemoryStore
from x402_meter.client import PayingAsyncClient, PayingClient, Wallet
from x402_meter.devstack import LocalStack, token_balance
from x402_meter.devstack.accounts import DEPLOYER
from x402_meter.devstack.asgi_server import serving
from x402_meter.devstack.contracts_artifacts import load_artifact

FUNDING: Final = 100 * 10**6  # 100 test USDC
FRAMEWORKS: Final[dict[str, Callable[..., Any]]] = {
    "fastapi": create_fastapi_app,
    "litestar": create_litestar_app,
}


def fund(stack: LocalStack, address: str) -> None:
    """Give ``address`` gas, 100 test USDC and a Permit2 approval."""
    w3 = stack.web3()
    token = w3.eth.contract(
        address=Web3.to_checksum_address(stack.asset), abi=load_artifact("Token")["abi"]
    )
    anvil: Any = w3.provider  # anvil's own JSON-RPC methods are not in web3's types
    anvil.make_request("anvil_setBalance", [address, hex(10**18)])
    anvil.make_request("anvil_impersonateAccount", [address])  # sends its approve
    for call, sender in (
        (token.functions.mint(address, FUNDING), DEPLOYER.address),
        (token.functions.approve(PERMIT2_ADDRESS, 2**256 - 1), address),
    ):
        sent = w3.eth.send_transaction(call.build_transaction({"from": sender}))
        assert w3.eth.wait_for_transaction_receipt(sent)["status"] == 1
    anvil.make_request("anvil_stopImpersonatingAccount", [address])


def new_funded_payer(stack: LocalStack) -> LocalAccount:
    """A new account with gas, 100 test USDC and a Permit2 approval."""
    account: LocalAccount = Account.create()
    fund(stack, account.address)
    return account


@dataclass
class Example:
    """One example app being served, and the people who trade through it."""

    framework: str
    base: str
    stack: LocalStack
    settings: Settings
    payer: LocalAccount

    @property
    def asset(self) -> Asset:
        assert self.settings.asset is not None
        return self.settings.asset

    @property
    def seller(self) -> str:
        return self.settings.pay_to

    def balance(self, address: str) -> int:
        return token_balance(self.stack.web3(), self.stack.asset, address)

    def balances(self) -> tuple[int, int]:
        """(payer, seller), in atomic units."""
        return self.balance(self.payer.address), self.balance(self.seller)

    def wallet(self, **options: Any) -> Wallet:
        return Wallet(self.payer, network=self.stack.network, asset=self.asset, **options)

    def client(self, **options: Any) -> PayingAsyncClient:
        return PayingAsyncClient(wallet=self.wallet(**options))

    def sync_client(self, **options: Any) -> PayingClient:
        return PayingClient(wallet=self.wallet(**options))


def example_settings(stack: LocalStack, **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "pay_to": Account.create().address,  # a seller with nothing yet
        "network": stack.network,
        "facilitator_url": stack.facilitator_url,
        "facilitator_api_key": stack.facilitator_api_key,
        "asset": Asset(stack.asset, stack.asset_name, stack.asset_version, stack.asset_decimals),
    }
    return Settings(**(options | overrides))


@asynccontextmanager
async def serve_example(
    framework: str, stack: LocalStack, *, upstream: Upstream | None = None, **settings: Any
) -> AsyncIterator[Example]:
    config = example_settings(stack, **settings)
    app = FRAMEWORKS[framework](config, store=MemoryStore(), upstream=upstream)
    async with serving(app) as base:
        yield Example(framework, base, stack, config, new_funded_payer(stack))


@pytest.fixture(params=sorted(FRAMEWORKS))
async def example(
    request: pytest.FixtureRequest, x402_local_stack: LocalStack
) -> AsyncIterator[Example]:
    """Each example app (FastAPI, then Litestar), with the offline stub model upstream."""
    async with serve_example(request.param, x402_local_stack) as served:
        yield served
