"""Issue 13, finding 6: the paying client's ``max_total`` trusts only the chain.

A malicious seller (X402Meter under real uvicorn, on the local chain, settling through the
facilitator over HTTP) settles every authorization in full and serves receipts that lie:
``amount: 0``, with its real transaction, an earlier smaller one, or a reverted one. The
payer's on-chain balance never drops by more than ``max_total``, and the refusal comes before
anything is signed. With an RPC URL, an honest seller's settlements, read from the chain,
lower the count to what moved, so the budget is used in full.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import anyio
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from x402.mechanisms.evm.constants import (
    X402_UPTO_PERMIT2_PROXY_ABI,
    X402_UPTO_PERMIT2_PROXY_ADDRESS,
)

from tests.apps import MAX_TOKENS, PRICE_ATOMIC, completion_json, max_amount, meter_options
from tests.examples.conftest import new_funded_payer
from tests.openai_stream import usage
from x402_meter import Asset, X402Meter
from x402_meter.client import PayingAsyncClient, PayingClient, SpendCapExceededError, Wallet
from x402_meter.devstack import LocalStack, local_stack, token_balance
from x402_meter.devstack.asgi_server import serving
from x402_meter.errors import ConfigurationError

pytestmark = pytest.mark.anyio

MAX_TOTAL: Final = "0.02"  # 20,000 atomic units: two full authorizations fit, three do not
MAX_TOTAL_ATOMIC: Final = 20_000
ATTEMPTS: Final = 8  # on main, the client paid all eight (0.064 for a 0.02 cap)
FULL: Final = usage(prompt=MAX_TOKENS, completion=MAX_TOKENS)  # charged at the maximum
SMALL: Final = usage(prompt=100, completion=100)  # 400 atomic units
HONEST: Final = usage(prompt=1000, completion=1000)  # 4000 atomic units
CHAT: Final = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MAXIMUM: Final = max_amount(CHAT)  # what one chat authorizes: its prompt and 4096 tokens
Lie = Literal["amount_zero", "earlier_transaction", "reverted_transaction", "no_transaction"]
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]


class Model:
    """The seller's model: a JSON chat answer reporting the next usage in ``usages``
    (the last one repeats)."""

    def __init__(self, *usages: dict[str, int]) -> None:
        self.usages = list(usages)
        self.answered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        reported = self.usages[min(self.answered, len(self.usages) - 1)]
        self.answered += 1
        body = json.dumps(completion_json() | {"usage": reported}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass
class LyingReceipts:
    """ASGI wrapper of a metered app: every receipt it serves says ``amount: 0`` and, as
    ``lie`` says, names the real settlement, the first settlement it served (a smaller
    payment of the same payer), a reverted call of the proxy that carries this very
    authorization (its Permit2 nonce, owner and token, sent by someone not allowed), or no
    transaction at all."""

    app: Any
    lie: Lie
    stack: LocalStack
    first_transaction: str | None = None
    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The payment payload behind each receipt path, from the paid request's header."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["path"].startswith("/x402/receipts/"):
            await self._receipt(scope, receive, send)
        else:
            await self._paid(scope, receive, send)

    async def _paid(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        signature = headers.get(b"payment-signature") or headers.get(b"x-payment")

        async def remember(message: Message) -> None:
            if message["type"] == "http.response.start" and signature:
                path = dict(message.get("headers", ())).get(b"x-payment-receipt")
                if path:
                    self.payloads[path.decode()] = json.loads(base64.b64decode(signature))
            await send(message)

        await self.app(scope, receive, remember)

    async def _receipt(self, scope: Scope, receive: Receive, send: Send) -> None:
        start: Message = {}
        body = bytearray()

        async def hold(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            else:
                body.extend(message.get("body", b""))

        await self.app(scope, receive, hold)
        receipt = json.loads(body)
        if receipt.get("transaction"):
            self.first_transaction = self.first_transaction or receipt["transaction"]
            receipt["transaction"] = await self._named(scope["path"], receipt["transaction"])
        receipt["amount"] = "0"
        lied = json.dumps(receipt).encode()
        headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(lied)).encode()))
        await send(start | {"headers": headers})
        await send({"type": "http.response.body", "body": lied})

    async def _named(self, path: str, real: str) -> str | None:
        if self.lie == "no_transaction":
            return None
        if self.lie == "earlier_transaction":
            assert self.first_transaction is not None
            return self.first_transaction
        if self.lie == "reverted_transaction":
            payload = self.payloads[path]["payload"]
            return await anyio.to_thread.run_sync(reverted_settle, self.stack, payload)
        return real


def reverted_settle(stack: LocalStack, payload: dict[str, Any]) -> str:
    """Send the proxy's ``settle`` of this authorization for 1 unit from a stranger (the
    proxy refuses anyone but the witness's facilitator): a mined, reverted transaction."""
    w3 = stack.web3()
    auth = payload["permit2Authorization"]
    proxy = w3.eth.contract(
        address=Web3.to_checksum_address(X402_UPTO_PERMIT2_PROXY_ADDRESS),
        abi=X402_UPTO_PERMIT2_PROXY_ABI,
    )
    permit = (
        (Web3.to_checksum_address(auth["permitted"]["token"]), int(auth["permitted"]["amount"])),
        int(auth["nonce"]),
        int(auth["deadline"]),
    )
    witness = (
        Web3.to_checksum_address(auth["witness"]["to"]),
        Web3.to_checksum_address(auth["witness"]["facilitator"]),
        int(auth["witness"]["validAfter"]),
    )
    call = proxy.functions.settle(
        permit, 1, Web3.to_checksum_address(auth["from"]), witness, payload["signature"]
    )
    stranger = Web3.to_checksum_address(Account.create().address)
    anvil: Any = w3.provider  # anvil's own JSON-RPC methods are not in web3's types
    anvil.make_request("anvil_setBalance", [stranger, hex(10**18)])
    anvil.make_request("anvil_impersonateAccount", [stranger])
    # gas given, so that web3 does not estimate (and refuse) the reverting call
    sent = w3.eth.send_transaction(call.build_transaction({"from": stranger, "gas": 300_000}))
    anvil.make_request("anvil_stopImpersonatingAccount", [stranger])
    assert w3.eth.wait_for_transaction_receipt(sent)["status"] == 0
    return HexBytes(sent).to_0x_hex()


@dataclass
class Seller:
    base: str
    stack: LocalStack
    payer: LocalAccount

    @property
    def asset(self) -> Asset:
        stack = self.stack
        return Asset(stack.asset, stack.asset_name, stack.asset_version, stack.asset_decimals)

    def balance(self) -> int:
        return token_balance(self.stack.web3(), self.stack.asset, self.payer.address)

    def wallet(self, rpc_url: str | None) -> Wallet:
        # rpc_url only when given, so that the no-RPC case also runs on the code before it
        options: dict[str, Any] = {} if rpc_url is None else {"rpc_url": rpc_url}
        return Wallet(
            self.payer, network=self.stack.network, asset=self.asset, max_total=MAX_TOTAL, **options
        )


@asynccontextmanager
async def selling(
    stack: LocalStack, app: Callable[[Any], Any], model: Model, **options: Any
) -> AsyncIterator[Seller]:
    """Serve ``app(X402Meter(model))`` for a new seller, and fund a new payer."""
    options = meter_options(stack, pay_to=Account.create().address, **options)
    metered = X402Meter(model, **options)
    async with serving(app(metered)) as base:
        yield Seller(base, stack, new_funded_payer(stack))


async def pay_until_refused(http: PayingAsyncClient, seller: Seller) -> SpendCapExceededError:
    """Chat until the wallet refuses (at most ``ATTEMPTS`` times); then wait for every
    settlement, so the payer's balance is final."""
    refusal: SpendCapExceededError | None = None
    for _ in range(ATTEMPTS):
        try:
            answer = await http.post(f"{seller.base}/v1/chat/completions", json=CHAT)
        except SpendCapExceededError as refused:
            refusal = refused
            break
        assert answer.status_code == 200
    for payment in http.payments:
        assert (await http.receipt(payment, wait=20)).status == "settled"
    assert refusal is not None, f"paid {len(http.payments)} times for max_total {MAX_TOTAL}"
    return refusal


@pytest.mark.parametrize(
    ("lie", "with_rpc"),
    [
        ("amount_zero", False),
        ("amount_zero", True),
        ("earlier_transaction", True),
        ("reverted_transaction", True),
    ],
)
async def test_a_seller_lying_in_its_receipts_cannot_take_more_than_max_total(
    x402_local_stack: LocalStack, lie: Lie, with_rpc: bool
) -> None:
    """Finding 6. Failed on main (875f48c): with receipts saying ``amount: 0`` the client paid
    all eight chats, 8 x 8192 units for a 20,000-unit ``max_total`` (the ``rpc_url`` cases
    fail there for want of the option). Now each payment counts at its maximum unless the
    chain proves less: the third chat is refused before signing, and the payer lost at most
    ``max_total``, never more than the wallet counted."""
    stack = x402_local_stack
    liar: LyingReceipts | None = None

    def lying(metered: Any) -> LyingReceipts:
        nonlocal liar
        liar = LyingReceipts(metered, lie, stack)
        return liar

    first = SMALL if lie == "earlier_transaction" else FULL
    async with selling(stack, lying, Model(first, FULL)) as seller:
        before = seller.balance()
        rpc_url = stack.rpc_url if with_rpc else None
        async with PayingAsyncClient(wallet=seller.wallet(rpc_url)) as http:
            refused = await pay_until_refused(http, seller)
            lost = before - seller.balance()

    paid = http.payments
    assert liar is not None
    assert all(p.receipt is not None and p.receipt.amount == 0 for p in paid)  # all lies
    assert all(p.max_amount == MAXIMUM for p in paid)
    assert refused.cap == "max_total"
    assert lost <= MAX_TOTAL_ATOMIC
    assert lost <= http.wallet.spent <= MAX_TOTAL_ATOMIC
    if lie == "earlier_transaction":  # the first, honest and small, was proven on chain
        assert (len(paid), lost) == (3, 2 * PRICE_ATOMIC * 100 + 2 * MAXIMUM)
        assert paid[0].proof == liar.first_transaction
        assert http.wallet.spent == lost
        assert [p.proven_amount for p in paid[1:]] == [None, None]
    else:  # every one settled in full
        assert (len(paid), lost, http.wallet.spent) == (2, 2 * MAXIMUM, 2 * MAXIMUM)
        if with_rpc and lie == "amount_zero":  # the real transactions prove the full amount
            assert [p.proven_amount for p in paid] == [MAXIMUM, MAXIMUM]
        else:
            assert [p.proven_amount for p in paid] == [None, None]


@pytest.mark.parametrize("client", ["async", "sync"])
async def test_an_honest_sellers_settlements_read_from_the_chain_free_the_budget(
    x402_local_stack: LocalStack, client: str
) -> None:
    """The honest path: each chat is authorized for MAXIMUM and settled for 4000. Read from the
    chain, the settlements lower the count, so three chats fit in 20,000 (with maxima
    only two would), and what the wallet counts is exactly what the payer lost."""
    async with selling(x402_local_stack, lambda app: app, Model(HONEST)) as seller:
        before = seller.balance()
        wallet = seller.wallet(x402_local_stack.rpc_url)
        if client == "async":
            async with PayingAsyncClient(wallet=wallet) as http:
                refused = await pay_until_refused(http, seller)
        else:
            refused = await anyio.to_thread.run_sync(pay_until_refused_sync, wallet, seller)
        lost = before - seller.balance()

    charge = 2000 * PRICE_ATOMIC
    assert (refused.cap, refused.left) == ("max_total", MAX_TOTAL_ATOMIC - 3 * charge)
    assert [p.proven_amount for p in wallet.payments] == [charge] * 3
    assert [p.proof for p in wallet.payments] == [p.transaction for p in wallet.payments]
    assert wallet.spent == lost == 3 * charge


def pay_until_refused_sync(wallet: Wallet, seller: Seller) -> SpendCapExceededError:
    with PayingClient(wallet=wallet) as http:
        for _ in range(ATTEMPTS):
            try:
                assert http.post(f"{seller.base}/v1/chat/completions", json=CHAT).is_success
            except SpendCapExceededError as refused:
                for payment in http.payments:
                    assert http.receipt(payment, wait=20).status == "settled"
                return refused
    raise AssertionError(f"paid {len(wallet.payments)} times for max_total {MAX_TOTAL}")


async def test_an_rpc_url_of_another_chain_proves_nothing(x402_local_stack: LocalStack) -> None:
    """The chain the RPC URL serves is the wallet's, or nothing read from it counts."""
    from x402_meter.client.chain_proof import ChainProver, Permit2Authorization  # new in this fix

    stack = x402_local_stack
    prover = ChainProver(stack.rpc_url, chain_id=8453, asset=stack.asset)
    authorization = Permit2Authorization(
        owner=Web3.to_checksum_address(Account.create().address),
        token=Web3.to_checksum_address(stack.asset),
        nonce=1,
        deadline=1,
    )
    with pytest.raises(ConfigurationError, match="serves chain 31337"):
        await anyio.to_thread.run_sync(prover.settled_amount, authorization, "0x" + "00" * 32)


@pytest.fixture
def own_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A local stack of the test's own: it moves its chain's clock forward, past the
    deadlines of the authorizations signed after (the wall clock's), which neither the
    session's shared chain nor another test may see."""
    with local_stack(log_dir=tmp_path_factory.mktemp("client-trust-stack")) as stack:
        yield stack


def mine_after(stack: LocalStack, deadline: int) -> None:
    """Mine a block whose timestamp is past ``deadline`` (Permit2's test is ``>``)."""
    w3 = stack.web3()
    latest = int(w3.eth.get_block("latest")["timestamp"])
    anvil: Any = w3.provider
    anvil.make_request("evm_mine", [max(latest, deadline) + 1])


async def test_an_authorization_expired_unused_on_chain_is_released(
    own_chain: LocalStack,
) -> None:
    """An answer charged 0 is settled without a transaction, so no chain proof exists and
    it counts at its maximum; once the chain is past its deadline with the Permit2 nonce
    unused, it can never be settled, and it no longer counts."""
    model = Model(usage(0, 0))
    async with (
        selling(own_chain, lambda app: app, model, max_timeout_seconds=30) as seller,
        PayingAsyncClient(wallet=seller.wallet(own_chain.rpc_url)) as http,
    ):
        await http.post(f"{seller.base}/v1/chat/completions", json=CHAT)
        await http.post(f"{seller.base}/v1/chat/completions", json=CHAT)
        free, _ = http.payments
        receipt = await http.receipt(free, wait=20)
        with pytest.raises(SpendCapExceededError):  # 3 x MAXIMUM > 20,000
            await http.post(f"{seller.base}/v1/chat/completions", json=CHAT)
        assert free.authorization is not None
        assert (receipt.amount, receipt.transaction, free.spend) == (0, None, MAXIMUM)

        mine_after(own_chain, free.authorization.deadline)
        # The wallet signs again. (Whether the seller's facilitator then accepts it depends on
        # how far this test moved the chain's clock past the wall clock: not asserted.)
        await http.post(f"{seller.base}/v1/chat/completions", json=CHAT)

    assert (free.proven_amount, free.proof, free.spend) == (0, None, 0)
    assert len(http.payments) == 3
    assert http.payments[2].signed


async def test_a_settled_authorization_is_not_released_after_its_deadline(
    own_chain: LocalStack,
) -> None:
    """A seller that settles in full and hides the transaction from its receipts: past the
    deadline the Permit2 nonce is used on chain, so the payment keeps counting in full."""
    liar: LyingReceipts | None = None

    def lying(metered: Any) -> LyingReceipts:
        nonlocal liar
        liar = LyingReceipts(metered, "no_transaction", own_chain)
        return liar

    async with selling(own_chain, lying, Model(FULL), max_timeout_seconds=30) as seller:
        before = seller.balance()
        wallet = Wallet(
            seller.payer,
            network=own_chain.network,
            asset=seller.asset,
            max_total="0.01",  # one full authorization fits, two do not
            rpc_url=own_chain.rpc_url,
        )
        async with PayingAsyncClient(wallet=wallet) as http:
            await http.post(f"{seller.base}/v1/chat/completions", json=CHAT)
            (paid,) = http.payments
            receipt = await http.receipt(paid, wait=20)
            assert paid.authorization is not None
            mine_after(own_chain, paid.authorization.deadline)
            with pytest.raises(SpendCapExceededError):
                await http.post(f"{seller.base}/v1/chat/completions", json=CHAT)
        lost = before - seller.balance()

    assert (receipt.status, receipt.transaction) == ("settled", None)
    assert (paid.proven_amount, paid.spend) == (None, MAXIMUM)
    assert lost == wallet.spent == MAXIMUM
