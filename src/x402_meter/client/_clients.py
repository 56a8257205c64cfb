"""The paying clients: ``httpx.Client`` and ``httpx.AsyncClient`` with a wallet underneath."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import httpx
from eth_account.signers.local import LocalAccount

from x402_meter.assets import Asset
from x402_meter.client._receipts import (
    DEFAULT_RECEIPT_WAIT,
    RECEIPT_HEADER,
    Payment,
    PaymentListener,
    Receipt,
    required,
)
from x402_meter.client._sessions import DEFAULT_MAX_SESSIONS, ChannelBalance, SessionRefund
from x402_meter.client._transports import PayingAsyncTransport, PayingTransport
from x402_meter.client._wallet import DEFAULT_SCHEMES, AmountInput, Wallet
from x402_meter.errors import ConfigurationError

if TYPE_CHECKING:
    import httpx2

_DEFAULT_TIMEOUT: Final = 60.0
"""Seconds; httpx's own 5 s is too short for a model's first token after a payment."""


def _client_wallet(
    private_key: str | LocalAccount | None,
    *,
    wallet: Wallet | None,
    network: str | None,
    asset: Asset | None,
    max_per_request: AmountInput | None,
    max_total: AmountInput | None,
    on_payment: PaymentListener | None,
    rpc_url: str | None,
    schemes: Sequence[str],
    session_deposit: AmountInput | None,
    max_sessions: int,
    session_store: str | os.PathLike[str] | None,
) -> Wallet:
    """The wallet a paying client pays from: ``wallet`` as given, else one built from the
    key and the ``Wallet`` options (the one place both clients check these arguments)."""
    if wallet is not None:
        if private_key is not None or rpc_url is not None or session_store is not None:
            raise ConfigurationError(
                "pass private_key (and network, rpc_url, session_store) or wallet, not both"
            )
        return wallet
    if private_key is None or network is None:
        raise ConfigurationError("pass private_key and network, or wallet=Wallet(...)")
    return Wallet(
        private_key,
        network=network,
        asset=asset,
        max_per_request=max_per_request,
        max_total=max_total,
        on_payment=on_payment,
        rpc_url=rpc_url,
        schemes=schemes,
        session_deposit=session_deposit,
        max_sessions=max_sessions,
        session_store=session_store,
    )


class _WalletPayments:
    """What both paying clients tell of their wallet's payments."""

    wallet: Wallet

    @property
    def payments(self) -> tuple[Payment, ...]:
        """The wallet's payments, oldest first."""
        return self.wallet.payments

    @property
    def last_payment(self) -> Payment | None:
        payments = self.wallet.payments
        return payments[-1] if payments else None

    def payment_of(self, response: httpx.Response) -> Payment | None:
        """The payment made for ``response`` (found by its receipt header), if it was paid:
        for requests running at once, where ``last_payment`` may be another one's."""
        path = response.headers.get(RECEIPT_HEADER)
        if not path:
            return None
        url = str(response.request.url.join(path))
        return next((p for p in reversed(self.wallet.payments) if p.receipt_url == url), None)


class PayingAsyncClient(_WalletPayments, httpx.AsyncClient):
    """``httpx.AsyncClient`` that pays x402 402s; give it to ``openai.AsyncOpenAI``.

    ``PayingAsyncClient(key, network="eip155:8453")`` pays in the network's USDC; the keyword
    arguments after ``network`` are ``Wallet``'s; ``wallet=`` shares one wallet (and its
    caps) between clients; ``transport`` is the transport it sends through; anything else goes
    to ``httpx.AsyncClient`` (the default timeout is 60 s). ``schemes=("batch-settlement",
    "upto")`` pays by session where a server offers one (``docs/client.md``).
    """

    def __init__(
        self,
        private_key: str | LocalAccount | None = None,
        *,
        network: str | None = None,
        asset: Asset | None = None,
        max_per_request: AmountInput | None = "1",
        max_total: AmountInput | None = None,
        wallet: Wallet | None = None,
        on_payment: PaymentListener | None = None,
        rpc_url: str | None = None,
        schemes: Sequence[str] = DEFAULT_SCHEMES,
        session_deposit: AmountInput | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        session_store: str | os.PathLike[str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **httpx_options: Any,
    ) -> None:
        self.wallet = _client_wallet(
            private_key,
            wallet=wallet,
            network=network,
            asset=asset,
            max_per_request=max_per_request,
            max_total=max_total,
            on_payment=on_payment,
            rpc_url=rpc_url,
            schemes=schemes,
            session_deposit=session_deposit,
            max_sessions=max_sessions,
            session_store=session_store,
        )
        self._owns_wallet = wallet is None
        """Built here: closing the client lets go of its channels in ``session_store``."""
        self.paying_transport = PayingAsyncTransport(self.wallet, transport)
        httpx_options.setdefault("timeout", _DEFAULT_TIMEOUT)
        super().__init__(transport=self.paying_transport, **httpx_options)

    async def receipt(
        self, payment: Payment | None = None, *, wait: float = DEFAULT_RECEIPT_WAIT
    ) -> Receipt:
        """The receipt of ``payment`` (default: the last one), waiting up to ``wait`` seconds
        (the server allows at most 30) for it to be settled. Read streams to the end first:
        a stream is charged when it closes."""
        payment = payment or self.last_payment
        return await self.paying_transport.fetch_receipt(required(payment), wait)

    async def balance(self) -> tuple[ChannelBalance, ...]:
        """Each session channel's money: ``deposited``, ``charged``, ``remaining`` (atomic
        units; ``units()`` converts), after reading the receipts of streamed answers."""
        return await self.paying_transport.balance()

    async def close_sessions(self) -> tuple[SessionRefund, ...]:
        """Take back what is left in every session channel, now (the server's cooperative
        refund; waits for the answers being served on them). The wallet deposits again if
        it pays by session later. With a ``session_store``, also the channels earlier processes
        left there (that no other process holds). What comes back is counted back from
        ``max_total``. Raises ``SessionRefundError`` if a server refuses."""
        return await self.paying_transport.close_sessions()

    async def aclose(self) -> None:
        await super().aclose()
        if self._owns_wallet:
            self.wallet.close()

    async def __aexit__(self, *exc_info: Any) -> None:
        await super().__aexit__(*exc_info)
        if self._owns_wallet:
            self.wallet.close()

    def httpx2_client(self) -> httpx2.AsyncClient:
        """This client as an ``httpx2.AsyncClient``, for packages built on httpx2 (the
        ``anthropic`` package's ``AsyncAnthropic(http_client=...)``): the same wallet,
        caps and receipts."""
        from x402_meter.client._httpx2 import async_client

        return async_client(self)


class PayingClient(_WalletPayments, httpx.Client):
    """``httpx.Client`` that pays x402 402s; give it to ``openai.OpenAI``.

    The same arguments as ``PayingAsyncClient``, with a sync ``transport``.
    """

    def __init__(
        self,
        private_key: str | LocalAccount | None = None,
        *,
        network: str | None = None,
        asset: Asset | None = None,
        max_per_request: AmountInput | None = "1",
        max_total: AmountInput | None = None,
        wallet: Wallet | None = None,
        on_payment: PaymentListener | None = None,
        rpc_url: str | None = None,
        schemes: Sequence[str] = DEFAULT_SCHEMES,
        session_deposit: AmountInput | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        session_store: str | os.PathLike[str] | None = None,
        transport: httpx.BaseTransport | None = None,
        **httpx_options: Any,
    ) -> None:
        self.wallet = _client_wallet(
            private_key,
            wallet=wallet,
            network=network,
            asset=asset,
            max_per_request=max_per_request,
            max_total=max_total,
            on_payment=on_payment,
            rpc_url=rpc_url,
            schemes=schemes,
            session_deposit=session_deposit,
            max_sessions=max_sessions,
            session_store=session_store,
        )
        self._owns_wallet = wallet is None
        """Built here: closing the client lets go of its channels in ``session_store``."""
        self.paying_transport = PayingTransport(self.wallet, transport)
        httpx_options.setdefault("timeout", _DEFAULT_TIMEOUT)
        super().__init__(transport=self.paying_transport, **httpx_options)

    def receipt(
        self, payment: Payment | None = None, *, wait: float = DEFAULT_RECEIPT_WAIT
    ) -> Receipt:
        """The receipt of ``payment`` (default: the last one); see
        ``PayingAsyncClient.receipt``."""
        payment = payment or self.last_payment
        return self.paying_transport.fetch_receipt(required(payment), wait)

    def balance(self) -> tuple[ChannelBalance, ...]:
        """See ``PayingAsyncClient.balance``."""
        return self.paying_transport.balance()

    def close_sessions(self) -> tuple[SessionRefund, ...]:
        """See ``PayingAsyncClient.close_sessions``."""
        return self.paying_transport.close_sessions()

    def close(self) -> None:
        super().close()
        if self._owns_wallet:
            self.wallet.close()

    def __exit__(self, *exc_info: Any) -> None:
        super().__exit__(*exc_info)
        if self._owns_wallet:
            self.wallet.close()

    def httpx2_client(self) -> httpx2.Client:
        """This client as an ``httpx2.Client``, for packages built on httpx2 (the
        ``anthropic`` package's ``Anthropic(http_client=...)``): the same wallet, caps
        and receipts."""
        from x402_meter.client._httpx2 import sync_client

        return sync_client(self)
