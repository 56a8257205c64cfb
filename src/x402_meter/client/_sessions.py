"""Sessions: the wallet's payment channels (x402 ``batch-settlement``), one pool per server.

A channel serves one request at a time (the server refuses a second with
``invalid_batch_settlement_evm_channel_busy``), so a request leases a channel of its
server's pool for as long as its answer lasts, and concurrent requests open more channels
(each its own ``salt``, so its own channel id), up to ``max_sessions``; beyond that they
wait for one to be given back. Each channel signs with its own instance of the SDK's client
scheme; they share one ``ClientChannelStorage``, in which the SDK keeps each channel's
deposited balance and charged cumulative.

A streamed answer's charge is not in its headers but in its receipt: the channel keeps it
as *pending* and, before it signs its next voucher, reads the receipt and writes the charge
into the storage, after checking that it is within the voucher it signed. No corrective 402.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, cast

import anyio
import anyio.from_thread
import anyio.lowlevel
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
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signer import ClientEvmSigner
from x402.schemas import PaymentRequirements

from x402_meter.client._exceptions import (
    ReceiptUnavailableError,
    SessionReceiptError,
    SessionRefundError,
)
from x402_meter.client._receipts import SESSION_SCHEME, Payment, Receipt

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
        delay if isinstance(delay, int) and not isinstance(delay, bool) else 0,
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
class ChannelRefund:
    """What ``close_sessions`` took back from one channel (atomic units)."""

    channel_id: str
    amount: int
    transaction: str


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
        storage: InMemoryClientChannelStorage,
    ) -> None:
        self.pool = pool
        self.salt = "0x" + secrets.token_hex(32)
        """Random: every wallet opens channels of its own (two processes with one key never
        share one, which would make them busy for each other)."""
        self.storage = storage
        self.scheme = BatchSettlementEvmScheme(
            signer,
            BatchSettlementEvmSchemeOptions(
                storage=storage, salt=self.salt, deposit_strategy=self._deposit
            ),
        )
        self.id: str | None = None
        """The channel id, once a request named the server's terms."""
        self.url: str | None = None
        """The last resource paid through this channel (where a refund is asked)."""
        self.leased = False
        self.pending: PendingCharge | None = None
        self.deposit_due: int | None = None
        """The deposit decided for the payment being signed (None: a voucher alone)."""
        self.retired: str | None = None
        """Why the channel signs no more vouchers (a receipt claimed too much)."""

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
        if url:
            self.url = url
        return self.id

    def state(self) -> BatchSettlementClientContext:
        found = self.storage.get(self.id) if self.id is not None else None
        return found if found is not None else BatchSettlementClientContext()

    def charged(self) -> int:
        return int(self.state().charged_cumulative_amount or "0")

    def deposited(self) -> int:
        return int(self.state().balance or "0")

    def plan_deposit(self, amount: int, minimum: Any, configured: int | None) -> int | None:
        """The deposit the next voucher (charged + ``amount``) needs, or None.

        The first deposit, and a top-up when the voucher would pass the balance, is
        ``configured`` (else the server's ``minDeposit``, else 5 requests' maxima), and
        always at least what the voucher needs.
        """
        balance, charged = self.deposited(), self.charged()
        if balance > 0 and charged + amount <= balance:
            self.deposit_due = None
            return None
        needed = charged + amount - balance
        target = configured
        if target is None:
            target = parse_announced_min_deposit(minimum, amount) or SDK_DEPOSIT_MULTIPLE * amount
        self.deposit_due = max(target, needed)
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
            claimed = channel.get("charged_cumulative")
            if str(channel.get("id", "")).lower() != self.id or not (
                isinstance(claimed, str) and claimed.isdigit()
            ):
                self._retire(f"the receipt of {pending.payment.url} is not for channel {self.id}")
            charged = int(claimed)  # type: ignore[arg-type]
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

    def refund(self, fetch: RefundFetch) -> ChannelRefund | None:
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
        return ChannelRefund(self.id, remaining, settled.transaction)

    def _retire(self, why: str) -> None:
        """Set the channel aside, its state as before the lie (and its deposit, which
        landed: ``close_sessions`` may still take it back)."""
        self.retired = why
        pending = self.pending
        if pending is not None:
            self._write(pending.charged_before, pending)
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


class _Waiter:
    """A request waiting for a channel (``wanted``, or any): woken with one handed to it."""

    def __init__(self, wake: Callable[[], None], wanted: SessionChannel | None = None) -> None:
        self.wake = wake
        self.wanted = wanted
        self.channel: SessionChannel | None = None


class ChannelPool:
    """One server's channels and the requests waiting for one."""

    def __init__(self, key: ServerKey) -> None:
        self.key = key
        self.channels: list[SessionChannel] = []
        self.waiters: deque[_Waiter] = deque()


class SessionChannels:
    """Every session channel of one wallet, by server. Thread-safe: requests of several
    threads and event loops lease from it.

    Args:
        signer: signs the vouchers and deposits (the wallet's key).
        max_sessions: channels per server at most; more concurrent requests wait.
        deposit: the deposit size in atomic units; None: the server's ``minDeposit``.
    """

    def __init__(self, signer: ClientEvmSigner, *, max_sessions: int, deposit: int | None) -> None:
        self.signer = signer
        self.max_sessions = max_sessions
        self.deposit = deposit
        self.storage = InMemoryClientChannelStorage()
        self._lock = threading.Lock()
        self._pools: dict[ServerKey, ChannelPool] = {}

    # -- leasing -------------------------------------------------------------------------------

    def _take(self, key: ServerKey, wake: Callable[[], None]) -> SessionChannel | _Waiter:
        """A free channel of the server's pool (a new one while there are fewer than
        ``max_sessions``), or the waiter queued for the next one given back."""
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = ChannelPool(key)
            live = [c for c in pool.channels if c.retired is None]
            free = next((c for c in live if not c.leased), None)
            if free is None and len(live) < self.max_sessions:
                free = SessionChannel(pool, self.signer, self.storage)
                pool.channels.append(free)
            if free is not None:
                free.leased = True
                return free
            waiter = _Waiter(wake)
            pool.waiters.append(waiter)
            return waiter

    def _take_channel(
        self, channel: SessionChannel, wake: Callable[[], None]
    ) -> SessionChannel | _Waiter:
        """``channel`` itself once it is free (to take its remainder back)."""
        with self._lock:
            if not channel.leased:
                channel.leased = True
                return channel
            waiter = _Waiter(wake, wanted=channel)
            channel.pool.waiters.append(waiter)
            return waiter

    def release(self, channel: SessionChannel) -> None:
        """Give ``channel`` back: to the first request waiting for it, else free. A retired
        channel frees its place for a new one instead."""
        with self._lock:
            if not channel.leased:
                return
            pool = channel.pool
            waiter = next(
                (
                    w
                    for w in pool.waiters
                    if w.wanted is channel or (w.wanted is None and channel.retired is None)
                ),
                None,
            )
            if waiter is None and channel.retired is not None:
                waiter = next((w for w in pool.waiters if w.wanted is None), None)
                if waiter is not None:
                    channel.leased = False
                    channel = SessionChannel(pool, self.signer, self.storage)
                    pool.channels.append(channel)
            if waiter is None:
                channel.leased = False
                return
            pool.waiters.remove(waiter)
            channel.leased = True
            waiter.channel = channel  # handed on, still leased
        try:
            waiter.wake()  # outside the lock: it may wait for another event loop
        except RuntimeError:  # that event loop is gone: the channel goes to the next one
            self.release(channel)

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiting request was cancelled: leave the queue, or pass on what it was given."""
        with self._lock:
            channel = waiter.channel
            if channel is None:
                for pool in self._pools.values():
                    if waiter in pool.waiters:
                        pool.waiters.remove(waiter)
                return
        self.release(channel)

    async def _wait_async(
        self, got: SessionChannel | _Waiter, event: anyio.Event
    ) -> SessionChannel:
        if isinstance(got, SessionChannel):
            return got
        try:
            await event.wait()
        except BaseException:
            self._abandon(got)
            raise
        assert got.channel is not None
        return got.channel

    def _wait_sync(self, got: SessionChannel | _Waiter, event: threading.Event) -> SessionChannel:
        if isinstance(got, SessionChannel):
            return got
        try:
            event.wait()
        except BaseException:
            self._abandon(got)
            raise
        assert got.channel is not None
        return got.channel

    async def lease_async(self, requirements: PaymentRequirements) -> SessionChannel:
        """A channel with the server of ``requirements`` for one request, waiting (without
        blocking the event loop) while all ``max_sessions`` serve other requests."""
        event = anyio.Event()
        return await self._wait_async(self._take(server_key(requirements), _waker(event)), event)

    def lease_sync(self, requirements: PaymentRequirements) -> SessionChannel:
        """``lease_async`` for a thread: blocks while all channels are busy."""
        event = threading.Event()
        return self._wait_sync(self._take(server_key(requirements), event.set), event)

    async def lease_channel_async(self, channel: SessionChannel) -> SessionChannel:
        """``channel`` itself, once the request it serves is done."""
        event = anyio.Event()
        return await self._wait_async(self._take_channel(channel, _waker(event)), event)

    def try_lease(self, channel: SessionChannel) -> bool:
        """Lease ``channel`` if it is free now."""
        with self._lock:
            if channel.leased:
                return False
            channel.leased = True
            return True

    def lease_channel_sync(self, channel: SessionChannel) -> SessionChannel:
        event = threading.Event()
        return self._wait_sync(self._take_channel(channel, event.set), event)

    # -- what the wallet shows -------------------------------------------------------------------

    def channels(self) -> Iterator[SessionChannel]:
        with self._lock:
            every = [c for pool in self._pools.values() for c in pool.channels]
        yield from every

    def channel_of(self, payload: dict[str, Any]) -> SessionChannel | None:
        """The channel a signed payload is for (by its config's salt)."""
        config = payload.get("channelConfig") or {}
        salt = str(config.get("salt", "")).lower()
        return next((c for c in self.channels() if c.salt == salt), None)

    def balances(self, decimals: int) -> tuple[ChannelBalance, ...]:
        found = (c.balance(decimals) for c in self.channels())
        return tuple(b for b in found if b is not None and (b.deposited or b.charged))


def _waker(event: anyio.Event) -> Callable[[], None]:
    """Sets ``event`` from any thread: directly in its event loop's thread, else through it."""
    token = anyio.lowlevel.current_token()
    thread = threading.get_ident()

    def wake() -> None:
        if threading.get_ident() == thread:
            event.set()
        else:
            anyio.from_thread.run_sync(event.set, token=token)

    return wake


__all__ = [
    "DEFAULT_MAX_SESSIONS",
    "SESSION_SCHEME",
    "ChannelBalance",
    "ChannelRefund",
    "SessionChannel",
    "SessionChannels",
]
