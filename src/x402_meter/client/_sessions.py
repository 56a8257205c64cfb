"""Sessions: one of the wallet's payment channels (x402 ``batch-settlement``) with one
server, and what it tells (``ChannelBalance``, ``SessionRefund``).

Each channel signs with its own instance of the SDK's client scheme (its own ``salt``, so
its own channel id) and its own ``ClientChannelStorage``, in which the SDK keeps the
channel's deposited balance and charged cumulative; with a ``session_store`` each change is
also written to the payer's channel book (``_channel_book``), so that a later process
resumes the channel. Which request uses which channel is ``_channel_leases``'.

A streamed answer's charge is not in its headers but in its receipt: the channel keeps it
as *pending* and, before it signs its next voucher, reads the receipt and writes the charge
into the storage, after checking that it is within the voucher it signed. No corrective 402.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, NoReturn, cast

import httpx
from x402.mechanisms.evm.batch_settlement.client import (
    BatchSettlementClientContext,
    BatchSettlementDepositStrategyContext,
    BatchSettlementEvmScheme,
    BatchSettlementEvmSchemeOptions,
    InMemoryClientChannelStorage,
    RefundOptions,
    parse_announced_min_deposit,
)
from x402.mechanisms.evm.batch_settlement.constants import MIN_WITHDRAW_DELAY
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signer import ClientEvmSigner
from x402.schemas import PaymentRequirements

from x402_meter.client._attempt import current_attempt
from x402_meter.client._channel_book import BookedChannel, ChannelBook
from x402_meter.client._exceptions import (
    ReceiptUnavailableError,
    SessionReceiptError,
    SessionRefundError,
)
from x402_meter.client._receipts import SESSION_SCHEME, Payment, Receipt, seller_amount

if TYPE_CHECKING:
    from x402_meter.client._channel_leases import ChannelPool

DEFAULT_MAX_SESSIONS: Final = 4
SDK_DEPOSIT_MULTIPLE: Final = 5
"""Without a ``minDeposit`` from the server, the first deposit covers this many requests'
maxima (the SDK client's own default)."""

UNREAD_RECEIPT: Final = (ReceiptUnavailableError, httpx.HTTPError)
"""What fetching a receipt raises when it could not be read."""
_LOG: Final = logging.getLogger("x402_meter.client")

ServerKey = tuple[str, str, str, str, int]
"""What one server's channels share: network, asset, payTo, receiver authorizer, withdraw
delay (lowercased addresses). Only the salt differs between them."""


def server_key(requirements: PaymentRequirements) -> ServerKey:
    extra = requirements.extra or {}
    delay = extra.get("withdrawDelay")
    return (
        str(requirements.network),
        requirements.asset.lower(),
        requirements.pay_to.lower(),
        str(extra.get("receiverAuthorizer", "")).lower(),
        delay if isinstance(delay, int) and not isinstance(delay, bool) else MIN_WITHDRAW_DELAY,
    )


def booked_server_key(booked: BookedChannel) -> ServerKey:
    """The server a booked channel is with (as ``server_key`` names it from an offer)."""
    config = booked.config
    return (
        booked.network,
        config.token.lower(),
        config.receiver.lower(),
        config.receiver_authorizer.lower(),
        config.withdraw_delay,
    )


@dataclass(frozen=True, slots=True)
class ChannelBalance:
    """One session channel's money as the wallet knows it, in atomic units of ``asset``.

    ``charged`` lags behind while a streamed answer's receipt is unread (``pending``).
    """

    channel_id: str
    network: str
    asset: str
    pay_to: str
    decimals: int
    deposited: int
    """What the wallet deposited into the channel (less what it took back)."""
    charged: int
    """What the server has charged on it so far (its charged cumulative)."""
    pending: bool = False

    @property
    def remaining(self) -> int:
        """What is left to pay answers with, or to take back with ``close_sessions``."""
        return max(self.deposited - self.charged, 0)

    def units(self, atomic: int) -> Decimal:
        """Atomic units as an amount of the asset."""
        return Decimal(atomic).scaleb(-self.decimals)


@dataclass(frozen=True, slots=True)
class SessionRefund:
    """What ``close_sessions`` took back from one channel (atomic units)."""

    channel_id: str
    amount: int
    """What the refund's ``PAYMENT-RESPONSE`` says came back, never more than the channel's
    deposit less its charges as the wallet knew them: what ``max_total`` counts back."""
    transaction: str


class RefundsTaken:
    """``close_sessions``' outcome over every channel: one refused refund does not keep
    the others from being asked."""

    def __init__(self) -> None:
        self.refunds: list[SessionRefund] = []
        self.refused: list[str] = []

    def add(self, refund: SessionRefund | None) -> None:
        if refund is not None:
            self.refunds.append(refund)

    def failed(self, error: SessionRefundError) -> None:
        self.refused.append(str(error))

    def result(self) -> tuple[SessionRefund, ...]:
        """The refunds, or ``SessionRefundError`` naming every refusal (with the refunds)."""
        if self.refused:
            raise SessionRefundError("; ".join(self.refused), tuple(self.refunds))
        return tuple(self.refunds)


@dataclass(frozen=True, slots=True)
class RefundAnswer:
    """An answer to one of the refund's requests, as the SDK's refund flow reads it."""

    status: int
    headers: Mapping[str, str]

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


RefundFetch = Callable[[str, dict[str, str]], RefundAnswer]
"""GETs the resource URL with the given headers (the SDK's refund probe, then the refund)."""


@dataclass(frozen=True, slots=True)
class PendingCharge:
    """A streamed answer on a channel, charged in its receipt only."""

    payment: Payment
    voucher_max: int
    """The cumulative the answer's voucher signed: the most the channel can be charged."""
    charged_before: int
    balance_before: int
    deposit: int


class SessionChannel:
    """One of the wallet's channels with one server: its salt, the SDK scheme signing for
    it, and the request that holds it. State changes under its pool's lock."""

    def __init__(
        self,
        pool: ChannelPool,
        signer: ClientEvmSigner,
        *,
        book: ChannelBook | None = None,
        booked: BookedChannel | None = None,
    ) -> None:
        self.pool = pool
        self.salt = booked.config.salt.lower() if booked else "0x" + secrets.token_hex(32)
        """Random for a new channel: every wallet opens channels of its own (two processes
        with one key never share one, which would make them busy for each other); a channel
        resumed from the book keeps its own."""
        self.book = book
        self._saving = threading.Lock()
        self.storage = ChannelStorage(self)
        self.scheme = BatchSettlementEvmScheme(
            signer,
            BatchSettlementEvmSchemeOptions(
                storage=self.storage, salt=self.salt, deposit_strategy=self._deposit
            ),
        )
        self.id: str | None = booked.channel_id if booked else None
        """The channel id, once a request named the server's terms."""
        self.network: str | None = booked.network if booked else None
        self.config: ChannelConfig | None = booked.config if booked else None
        self.url: str | None = booked.url if booked else None
        """The last resource paid through this channel (where a refund is asked)."""
        self.unchecked = booked is not None
        """Resumed from the book and not yet checked against the chain."""
        self.leased = False
        self.pending: PendingCharge | None = None
        self.deposit_due: int | None = None
        """The deposit decided for the payment being signed (None: a voucher alone)."""
        self.retired: str | None = booked.retired if booked else None
        """Why the channel signs no more vouchers (a receipt claimed too much)."""
        if booked is not None:
            self.storage.seed(booked.channel_id, booked.state)

    def _deposit(self, context: BatchSettlementDepositStrategyContext) -> int | bool:
        """The SDK's deposit strategy: the amount the wallet decided (and counted) before
        signing; never a deposit it did not count."""
        return self.deposit_due if self.deposit_due is not None else False

    # -- the channel's state (the SDK's storage) -------------------------------------------

    def bind(self, requirements: PaymentRequirements, url: str) -> str:
        """Name the channel for the server's ``requirements`` (its id is the hash of the
        config: payer, server, terms, salt)."""
        config = self.scheme.build_channel_config(requirements)
        self.id = compute_channel_id(config, str(requirements.network)).lower()
        self.config, self.network = config, str(requirements.network)
        if url:
            self.url = url
        return self.id

    def signed(self, payload: dict[str, Any]) -> None:
        """Keep the voucher just signed (the most the server can claim on the channel) in
        its state: the book then has the channel before the server answers."""
        voucher = payload.get("voucher")
        if self.id is None or not isinstance(voucher, dict):
            return
        state = self.state()
        state.signed_max_claimable = str(voucher.get("maxClaimableAmount"))
        state.signature = str(voucher.get("signature"))
        self.storage.set(self.id, state)

    def changed(self) -> None:
        """The channel's state changed: written to the book now, or, in an attempt that
        defers its writes (the async transport's), before its request is sent again and
        once its answer is in."""
        if not current_attempt().defer_book_write(self):
            self.save()

    def save(self) -> None:
        """Write the channel to the book (or forget it there once its state is gone: a
        full refund). Nothing without a book. One write at a time (from a worker thread or
        not), each of the state as it is then: the last write is of the latest state."""
        if self.book is None or self.id is None:
            return
        with self._saving:
            self._save(self.book, self.id)

    def _save(self, book: ChannelBook, channel_id: str) -> None:
        state = self.storage.get(channel_id)
        try:
            if state is None:
                book.remove(channel_id)
            elif self.config is not None and self.network is not None:
                book.write(
                    BookedChannel(
                        channel_id=channel_id,
                        network=self.network,
                        config=self.config,
                        state=state,
                        url=self.url,
                        retired=self.retired,
                    )
                )
        except OSError as error:  # the book is a convenience: this process goes on
            _LOG.warning("session_store: channel %s not written: %s", channel_id, error)

    def checked_on_chain(self, balance: int, total_claimed: int) -> None:
        """What the chain holds of a resumed channel wins over the book: its balance (all
        deposits less refunds and withdrawals) is what was deposited, and no less than what
        it claimed has been charged. A voucher the server holds above that is its corrective
        402's to say (checked against our own signature)."""
        self.unchecked = False
        if self.id is None:
            return
        state = self.state()
        booked = int(state.charged_cumulative_amount or "0")
        if int(state.balance or "0") != balance:
            _LOG.warning(
                "channel %s: the book says %s deposited, the chain %s: the chain wins",
                self.id,
                state.balance or "0",
                balance,
            )
        state.balance = str(balance)
        state.charged_cumulative_amount = str(max(booked, total_claimed))
        state.total_claimed = str(total_claimed)
        self.storage.set(self.id, state)

    def state(self) -> BatchSettlementClientContext:
        found = self.storage.get(self.id) if self.id is not None else None
        return found if found is not None else BatchSettlementClientContext()

    def charged(self) -> int:
        return int(self.state().charged_cumulative_amount or "0")

    def deposited(self) -> int:
        return int(self.state().balance or "0")

    def plan_deposit(
        self, amount: int, *, suggested: Any, chosen: int | None, ceiling: int | None
    ) -> int | None:
        """The deposit the next voucher (charged + ``amount``) needs, or None.

        The first deposit, and a top-up when the voucher would pass the balance, is the
        size ``chosen`` by the payer, else the server's ``suggested`` ``minDeposit`` (else
        5 requests' maxima) but at most ``ceiling``: the server does not choose how much of
        the wallet goes into escrow. Always at least what the voucher needs.
        """
        balance, charged = self.deposited(), self.charged()
        if balance > 0 and charged + amount <= balance:
            self.deposit_due = None
            return None
        needed = charged + amount - balance
        size = chosen
        if size is None:
            size = parse_announced_min_deposit(suggested, amount) or SDK_DEPOSIT_MULTIPLE * amount
            if ceiling is not None:
                size = min(size, ceiling)
        self.deposit_due = max(size, needed)
        return self.deposit_due

    # -- a streamed answer's charge, from its receipt --------------------------------------

    def expect_receipt(self, payment: Payment) -> None:
        """``payment``'s answer carried no ``PAYMENT-RESPONSE`` (it streams): its charge is
        in its receipt, read before this channel signs again."""
        self.pending = PendingCharge(
            payment=payment,
            voucher_max=payment.cumulative or 0,
            charged_before=self.charged(),
            balance_before=self.deposited(),
            deposit=payment.deposit or 0,
        )
        if self.pending.deposit and self.id is not None:
            # It was answered, so its deposit landed (settled before the answer started):
            # recorded now, so that a process ending before the receipt is read leaves the
            # book (and a later process's refund) the deposit, the charge to the server.
            state = self.state()
            state.balance = str(self.pending.balance_before + self.pending.deposit)
            self.storage.set(self.id, state)

    def apply_receipt(self, receipt: Receipt) -> None:
        """Write the pending answer's charge from its receipt into the channel's state: the
        receipt's charged cumulative, never above what that answer's voucher signed."""
        pending = self.pending
        if pending is None:
            return
        channel = receipt.raw.get("channel")
        if receipt.status == "failed":
            charged = pending.charged_before  # not charged: the server's loss, not ours
        elif receipt.status in ("settled", "not_charged") and isinstance(channel, dict):
            claimed = seller_amount(channel.get("charged_cumulative"))
            if str(channel.get("id", "")).lower() != self.id or claimed is None:
                self._retire(f"the receipt of {pending.payment.url} is not for channel {self.id}")
            charged = claimed
            if charged > pending.voucher_max:
                self._retire(
                    f"the receipt claims {charged} charged on channel {self.id}, more than the"
                    f" {pending.voucher_max} its voucher signed"
                )
        else:
            self.receipt_unread(f"the receipt is {receipt.status}, not final yet")
            return
        self._write(charged, pending)

    def receipt_unread(self, why: str) -> None:
        """The pending answer's receipt could not be read: its deposit landed (it was
        answered), its charge is left out. The next voucher is then below the server's
        cumulative, and its corrective 402 (checked against our own vouchers) says it."""
        pending = self.pending
        if pending is None:
            return
        _LOG.warning(
            "the charge of %s on channel %s is unknown (%s): the server will say it",
            pending.payment.url,
            self.id,
            why,
        )
        self._write(pending.charged_before, pending)

    def _write(self, charged: int, pending: PendingCharge) -> None:
        state = self.state()
        state.charged_cumulative_amount = str(charged)
        state.balance = str(pending.balance_before + pending.deposit)
        assert self.id is not None
        self.storage.set(self.id, state)
        self.pending = None

    def refund(self, fetch: RefundFetch) -> SessionRefund | None:
        """Take the channel's remainder back (the SDK's cooperative refund: a voucher for the
        charged cumulative, which the server claims with the refund in one transaction).
        Blocking; ``fetch`` GETs the resource with the given headers. None: nothing left."""
        remaining = self.deposited() - self.charged()
        if self.id is None or self.url is None or remaining <= 0:
            return None
        try:
            settled = self.scheme.refund(self.url, RefundOptions(fetch=cast(Any, fetch)))
        except (RuntimeError, ValueError) as exc:
            raise SessionRefundError(f"channel {self.id}: {exc}") from exc
        # Done with: its record is gone (the SDK's, and the book's), and its on-chain
        # balance is what was claimed; the next session payment opens a new channel rather
        # than a corrective 402 and a deposit on this one.
        self.retired = "refunded"
        refunded = seller_amount(settled.amount) or 0
        if refunded > remaining:
            _LOG.warning(
                "the refund of channel %s says %s came back, more than the %s left in it:"
                " %s counted",
                self.id,
                refunded,
                remaining,
                remaining,
            )
        return SessionRefund(self.id, min(refunded, remaining), settled.transaction)

    def _retire(self, why: str) -> NoReturn:
        """Set the channel aside, its state as before the lie (and its deposit, which
        landed: ``close_sessions`` may still take it back)."""
        self.retired = why
        pending = self.pending
        if pending is not None:
            self._write(pending.charged_before, pending)
        else:
            self.changed()
        raise SessionReceiptError(why)

    def balance(self, decimals: int) -> ChannelBalance | None:
        if self.id is None:
            return None
        network, asset, pay_to, _, _ = self.pool.key
        return ChannelBalance(
            channel_id=self.id,
            network=network,
            asset=asset,
            pay_to=pay_to,
            decimals=decimals,
            deposited=self.deposited(),
            charged=self.charged(),
            pending=self.pending is not None,
        )


class ChannelStorage(InMemoryClientChannelStorage):
    """One channel's SDK storage: every change is also written to the payer's book (if
    any), the way the SDK's own file storage would, with the channel's config beside it."""

    def __init__(self, channel: SessionChannel) -> None:
        super().__init__()
        self.channel = channel

    def seed(self, key: str, context: BatchSettlementClientContext) -> None:
        """The state read from the book (not written back)."""
        super().set(key, context)

    def set(self, key: str, context: BatchSettlementClientContext) -> None:
        super().set(key, context)
        self.channel.changed()

    def delete(self, key: str) -> None:
        super().delete(key)
        self.channel.changed()


__all__ = [
    "DEFAULT_MAX_SESSIONS",
    "SESSION_SCHEME",
    "UNREAD_RECEIPT",
    "ChannelBalance",
    "RefundAnswer",
    "SessionChannel",
    "SessionRefund",
    "server_key",
]
