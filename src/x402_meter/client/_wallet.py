"""The wallet: a signer, the asset it pays in, its caps, and the SDK clients that sign with it.

The record of its payments is its ``ledger`` (``PaymentLedger``); the SDK calls the wallet's
hooks around each signature, which find their request through ``current_attempt``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Sequence
from decimal import ROUND_FLOOR, Decimal
from typing import Final, TypeAlias

import anyio.to_thread
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402 import x402Client, x402ClientSync
from x402.mechanisms.evm.exact import ExactEvmClientScheme
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import (
    PaymentCreatedContext,
    PaymentCreationContext,
    PaymentCreationFailureContext,
    PaymentRequirements,
)

from x402_meter.assets import Asset, default_asset
from x402_meter.client._attempt import Attempt, FetchReceipt, current_attempt
from x402_meter.client._channel_book import ChannelBook
from x402_meter.client._channel_leases import SessionChannels
from x402_meter.client._exceptions import (
    NoPayableOfferError,
    PayerError,
    SpendCapExceededError,
)
from x402_meter.client._ledger import PaymentLedger, RequirementsView
from x402_meter.client._receipts import (
    DEFAULT_RECEIPT_WAIT,
    Payment,
    PaymentListener,
    PaymentStage,
    Receipt,
)
from x402_meter.client._session_scheme import SessionScheme
from x402_meter.client._sessions import (
    DEFAULT_MAX_SESSIONS,
    SESSION_SCHEME,
    UNREAD_RECEIPT,
    ChannelBalance,
    SessionChannel,
    SessionRefund,
)
from x402_meter.client.chain_proof import ChainProver
from x402_meter.errors import ConfigurationError
from x402_meter.pricing import PriceInput, parse_price

AmountInput: TypeAlias = PriceInput
"""An amount of the asset as the user gives it: ``"0.05"``, ``1`` or a ``Decimal``."""

DEFAULT_SCHEMES: Final = ("upto", "exact")
KNOWN_SCHEMES: Final = ("batch-settlement", "upto", "exact")
DEPOSIT_CEILING_MULTIPLE: Final = 10
"""Without ``session_deposit``, a deposit follows the server's ``minDeposit`` up to this
many ``max_per_request`` (the SDK client's rule, with its multiplier of 5 doubled to cover
X402Meter's default suggestion of ten answers' maxima)."""
_LOG: Final = logging.getLogger("x402_meter.client")


def _atomic_cap(value: AmountInput | None, name: str, decimals: int) -> int | None:
    if value is None:
        return None
    amount = parse_price(value, name=name)
    return int(amount.scaleb(decimals).to_integral_value(ROUND_FLOOR))


def _through_a_transport(attempt: Attempt) -> None:
    """A session's channel is leased for a request and given back when its answer is done:
    only a paying transport knows when that is."""
    if attempt.fetch_receipt is None:
        raise PayerError(
            "sessions are paid through PayingClient, PayingAsyncClient or their transports,"
            " not the wallet's SDK client alone"
        )


def _chain_id(network: str) -> int:
    reference = network.removeprefix("eip155:")
    if not (reference.isascii() and reference.isdigit()):
        raise ConfigurationError(f"network must be eip155:<chain id>, got {network!r}")
    return int(reference)


class Wallet:
    """A signer, the asset it pays in, its caps, and the record of its payments.

    Args:
        private_key: the payer's key (hex string) or an ``eth_account`` ``LocalAccount``.
        network: the CAIP-2 network it pays on, e.g. ``"eip155:8453"`` (Base).
        asset: the only token it pays with; None: the network's USDC.
        max_per_request: the most one authorization may cover, in units of the asset
            (default ``"1"``, the x402 SDK's own default of one dollar); None: no cap.
        max_total: the most all its payments together may cost; None: no cap.
        schemes: the x402 schemes it signs, preferred in this order; add
            ``"batch-settlement"`` (first) to pay by session where a server offers one.
        receipt_wait: seconds to wait for outstanding receipts before refusing for
            ``max_total``.
        on_payment: called at each ``PaymentStage`` of each payment.
        rpc_url: a JSON-RPC endpoint of ``network`` that the payer trusts (not the
            seller's). Settlements read from it lower what a payment counts against
            ``max_total`` to what actually moved; None: every payment counts at its maximum.
        session_deposit: a session's deposit (and each top-up), in units of the asset;
            None: the server's suggested ``minDeposit``, at most 10 ``max_per_request``.
            Always at least what the next voucher needs.
        max_sessions: session channels per server at most, one per concurrent request;
            further requests wait for one to be free.
        session_store: a directory where the wallet keeps its session channels (no key in
            it), so that a later process resumes them instead of depositing again, and its
            ``close_sessions()`` takes back what earlier ones left. Processes sharing it
            never use one channel at once. None: channels live in this process only.

    Thread-safe; share one wallet between clients to share its caps.
    """

    def __init__(
        self,
        private_key: str | LocalAccount,
        *,
        network: str,
        asset: Asset | None = None,
        max_per_request: AmountInput | None = "1",
        max_total: AmountInput | None = None,
        schemes: Sequence[str] = DEFAULT_SCHEMES,
        receipt_wait: float = DEFAULT_RECEIPT_WAIT,
        on_payment: PaymentListener | None = None,
        rpc_url: str | None = None,
        session_deposit: AmountInput | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        session_store: str | os.PathLike[str] | None = None,
    ) -> None:
        if isinstance(private_key, str):
            try:
                account: LocalAccount = Account.from_key(private_key)
            except (ValueError, TypeError) as exc:
                raise ConfigurationError("private_key must be a 32-byte hex key") from exc
        else:
            account = private_key
        if not isinstance(network, str) or not network.startswith("eip155:"):
            raise ConfigurationError(f"network must be a CAIP-2 EVM id, got {network!r}")
        unknown = set(schemes) - set(KNOWN_SCHEMES)
        if not schemes or unknown:
            raise ConfigurationError(f"schemes must be among {KNOWN_SCHEMES}, got {schemes!r}")
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise ConfigurationError(f"max_sessions must be an int >= 1, got {max_sessions!r}")
        self.account = account
        self.network = network
        self.asset = asset if asset is not None else default_asset(network)
        self.max_per_request = _atomic_cap(max_per_request, "max_per_request", self.asset.decimals)
        """Atomic units, or None."""
        self.max_total = _atomic_cap(max_total, "max_total", self.asset.decimals)
        """Atomic units, or None."""
        self.schemes = tuple(schemes)
        self.receipt_wait = receipt_wait
        self.on_payment = on_payment
        self.prover = (
            None
            if rpc_url is None
            else ChainProver(rpc_url, chain_id=_chain_id(network), asset=self.asset.address)
        )
        """Reads settlements from ``rpc_url``; None without one."""
        self.ledger = PaymentLedger(
            payer=self.address, asset=self.asset, max_total=self.max_total, prover=self.prover
        )
        """The record of its payments, which the paying transports keep up to date."""
        deposit = _atomic_cap(session_deposit, "session_deposit", self.asset.decimals)
        if deposit == 0:
            raise ConfigurationError("session_deposit must be more than 0")
        self.sessions = SessionChannels(
            EthAccountSigner(account),
            max_sessions=max_sessions,
            deposit=deposit,
            deposit_ceiling=(
                None
                if self.max_per_request is None
                else DEPOSIT_CEILING_MULTIPLE * self.max_per_request
            ),
            book=None if session_store is None else ChannelBook(session_store, self.address),
        )
        """Its session channels (``batch-settlement``), by server."""
        self._async_client: x402Client | None = None
        self._sync_client: x402ClientSync | None = None

    @property
    def address(self) -> str:
        return str(self.account.address)

    @property
    def payments(self) -> tuple[Payment, ...]:
        """Every payment signed so far, oldest first."""
        return self.ledger.payments

    @property
    def spent(self) -> int:
        """Atomic units counted against ``max_total`` (see ``Payment.spend``)."""
        return self.ledger.spent

    def balance(self) -> tuple[ChannelBalance, ...]:
        """Each session channel's money (deposited, charged, remaining), as last known: a
        streamed answer's charge counts once its receipt is read (``pending`` until then;
        the clients' ``balance()`` reads it first)."""
        return self.sessions.balances(self.asset.decimals)

    @property
    def refunded(self) -> int:
        """Atomic units session refunds gave back (counted back from ``spent``)."""
        return self.ledger.refunded

    def count_refund(self, refund: SessionRefund | None) -> SessionRefund | None:
        """Count a refund back from ``spent`` (see ``PaymentLedger.record_refund``)."""
        if refund is not None:
            self.ledger.record_refund(refund.channel_id, refund.amount)
        return refund

    def check_resumed(self, channel: SessionChannel) -> None:
        """A channel resumed from the book, before its first use: what the chain holds of
        it (``rpc_url``) wins over what the book says. Blocking. Without ``rpc_url`` the
        book stands, and the server's corrective 402 corrects a charge that is behind; an
        unreadable chain leaves the book's word too (the server checks every voucher
        against its own state and the chain, so no answer goes unpaid)."""
        if not channel.unchecked or channel.id is None:
            return
        if self.prover is None:
            channel.unchecked = False
            return
        try:
            balance, claimed = self.prover.channel(channel.id)
        except ConfigurationError:
            raise
        except Exception as error:
            _LOG.warning("could not read channel %s from the chain: %s", channel.id, error)
            channel.unchecked = False
            return
        channel.checked_on_chain(balance, claimed)

    def close(self) -> None:
        """Let go of the session channels this wallet holds in its ``session_store`` (so
        another process may resume them; the process's exit does it too)."""
        if self.sessions.book is not None:
            self.sessions.book.close()

    def to_decimal(self, atomic: int) -> Decimal:
        """Atomic units as an amount of the asset: ``124`` -> ``Decimal("0.000124")``."""
        return Decimal(atomic).scaleb(-self.asset.decimals)

    def notify(self, stage: PaymentStage, payment: Payment | None) -> None:
        """Tell ``on_payment`` that ``payment`` reached ``stage`` (nothing for no payment)."""
        if self.on_payment is not None and payment is not None:
            self.on_payment(stage, payment)

    def received(self, payment: Payment, receipt: Receipt) -> None:
        """Record the receipt fetched for ``payment`` and tell ``on_payment``; a streamed
        session answer's receipt, fetched by the caller, also updates its channel (if no
        request holds it), which then need not fetch it again."""
        self.ledger.record_receipt(payment, receipt)
        self.sessions.received(payment, receipt)
        self.notify("receipt", payment)

    # -- the x402 SDK clients the transports pay with ----------------------------------------

    def x402_client(self) -> x402Client:
        """The SDK's async client: this wallet's schemes, spend controls, policy and hooks."""
        if self._async_client is None:
            client = x402Client()
            client.on_before_payment_creation(self._before_async)
            self._configure(client)
            self._async_client = client
        return self._async_client

    def x402_client_sync(self) -> x402ClientSync:
        """The SDK's sync client, configured like ``x402_client``."""
        if self._sync_client is None:
            client = x402ClientSync()
            client.on_before_payment_creation(self._before_sync)
            self._configure(client)
            self._sync_client = client
        return self._sync_client

    def _configure(self, client: x402Client | x402ClientSync) -> None:
        """What the async and the sync SDK client share (only the hook before signing differs:
        it may have to read the chain first, awaiting or blocking)."""
        client.on_after_payment_creation(self._after)
        client.on_payment_creation_failure(self._failed)
        signer = EthAccountSigner(self.account)
        for scheme in self.schemes:
            if scheme == SESSION_SCHEME:
                client.register(self.network, SessionScheme(self.sessions, self.address))
                continue
            kind = UptoEvmClientScheme if scheme == "upto" else ExactEvmClientScheme
            client.register(self.network, kind(signer))
        # The SDK allows only listed (and well-known) assets; the caps are this wallet's,
        # checked in its policy so the refusal can say which cap and by how much.
        client.set_spend_controls(
            {
                "allowed_assets": [{"network": self.network, "asset": self.asset.address}],
                "max_amount_per_payment": False,
            }
        )
        client.register_policy(self._policy)

    # -- the SDK's hooks: the steps of one payment ----------------------------------------------

    def _policy(self, version: int, offers: list[RequirementsView]) -> list[RequirementsView]:
        """Keep the offers in this wallet's network and asset, within ``max_per_request``;
        ``upto`` first (it charges only what is used), then the cheapest."""
        asset = self.asset.address.lower()
        payable = [
            offer
            for offer in offers
            if offer.network == self.network
            and offer.asset.lower() == asset
            and offer.scheme in self.schemes
            and offer.get_amount().isascii()
            and offer.get_amount().isdigit()
        ]
        if not payable:
            seen = ", ".join(f"{o.scheme} {o.asset} on {o.network}" for o in offers)
            raise NoPayableOfferError(
                f"no offer this wallet pays ({', '.join(self.schemes)} in {self.asset.address}"
                f" on {self.network}); offered: {seen or 'nothing'}"
            )
        cap = self.max_per_request
        within = [o for o in payable if cap is None or int(o.get_amount()) <= cap]
        if cap is not None and not within:
            cheapest = min(int(o.get_amount()) for o in payable)
            raise SpendCapExceededError(
                "max_per_request",
                requested=cheapest,
                limit=cap,
                left=cap,
                decimals=self.asset.decimals,
            )
        rank = {scheme: index for index, scheme in enumerate(self.schemes)}
        return sorted(within, key=lambda o: (rank[o.scheme], int(o.get_amount())))

    def _reserve(self, attempt: Attempt, offer: RequirementsView) -> None:
        channel = attempt.channel
        deposit = None
        if channel is not None and offer.scheme == SESSION_SCHEME:
            minimum = (offer.extra or {}).get("minDeposit")
            deposit = channel.plan_deposit(
                int(offer.get_amount()),
                suggested=minimum,
                chosen=self.sessions.deposit,
                ceiling=self.sessions.deposit_ceiling,
            )
        attempt.payment = self.ledger.reserve(
            offer,
            method=attempt.method,
            url=attempt.url,
            channel_id=channel.id if channel is not None else None,
            deposit=deposit,
        )
        self.notify("required", attempt.payment)

    def _reserve_first(self, attempt: Attempt, offer: RequirementsView) -> bool:
        """Reserve ``offer``'s amount; False when ``max_total`` refuses it but unproven
        payments may yet prove cheaper (read them, then ``_reserve`` again)."""
        try:
            self._reserve(attempt, offer)
        except SpendCapExceededError:
            if not self.ledger.unproven():
                raise
            return False
        return True

    async def _before_async(self, context: PaymentCreationContext) -> None:
        attempt = current_attempt()
        offer = context.selected_requirements
        if offer.scheme == SESSION_SCHEME and isinstance(offer, PaymentRequirements):
            if attempt.channel is None:
                _through_a_transport(attempt)
                attempt.channel = await self.sessions.lease_async(offer)
            if attempt.channel.unchecked:
                await anyio.to_thread.run_sync(self.check_resumed, attempt.channel)
            pending = self._bind(attempt.channel, offer, attempt)
            if pending is not None:
                await pending
        if not self._reserve_first(attempt, offer):
            resolved = attempt.resolve()
            if resolved is not None:
                await resolved
            self._reserve(attempt, offer)

    def _before_sync(self, context: PaymentCreationContext) -> None:
        attempt = current_attempt()
        offer = context.selected_requirements
        if offer.scheme == SESSION_SCHEME and isinstance(offer, PaymentRequirements):
            if attempt.channel is None:
                _through_a_transport(attempt)
                attempt.channel = self.sessions.lease_sync(offer)
            self.check_resumed(attempt.channel)
            self._bind(attempt.channel, offer, attempt)
        if not self._reserve_first(attempt, offer):
            attempt.resolve()
            self._reserve(attempt, offer)

    def _bind(
        self, channel: SessionChannel, offer: PaymentRequirements, attempt: Attempt
    ) -> Awaitable[None] | None:
        """Name the leased channel for ``offer``'s server and bring its state up to date: the
        charge of its last (streamed) answer, from that answer's receipt (async: awaitable)."""
        channel.bind(offer, attempt.url)
        return self.read_pending(channel, attempt.fetch_receipt)

    def read_pending(
        self, channel: SessionChannel, fetch: FetchReceipt | None
    ) -> Awaitable[None] | None:
        """Read the receipt of ``channel``'s streamed answer whose charge is not known yet
        (with ``fetch``, the transport's) and apply it; awaitable when ``fetch`` is async.
        A receipt that cannot be read leaves the charge to the server's corrective 402."""
        pending = channel.pending
        if pending is None or fetch is None:
            return None
        try:
            fetched = fetch(pending.payment, self.receipt_wait)
        except UNREAD_RECEIPT as error:
            channel.receipt_unread(str(error))
            return None
        if isinstance(fetched, Receipt):
            channel.apply_receipt(fetched)
            return None

        async def apply() -> None:
            try:
                receipt = await fetched
            except UNREAD_RECEIPT as error:
                channel.receipt_unread(str(error))
                return
            channel.apply_receipt(receipt)

        return apply()

    def _after(self, context: PaymentCreatedContext) -> None:
        payment = current_attempt().payment
        if payment is not None:
            self.ledger.record_signed(payment, context.payment_payload.payload)
            self.notify("signed", payment)

    def _failed(self, context: PaymentCreationFailureContext) -> None:
        current_attempt().forget(self.ledger)
