"""Which request uses which session channel: one pool of channels per server.

A channel serves one request at a time (the server refuses a second with
``invalid_batch_settlement_evm_channel_busy``), so a request leases a channel of its
server's pool for as long as its answer lasts, and concurrent requests open more channels,
up to ``max_sessions``; beyond that they wait (first come, first served) for one to be
given back, which the release hands straight to the first waiter. Requests of several
threads and event loops may share one wallet: the pool's state is under one lock, and a
waiter is woken in its own event loop.

With a channel book (``session_store``), a pool that needs another channel first resumes one
of the book's channels with that server that no process holds (claiming it), and only then
opens a new one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from x402.mechanisms.evm.signer import ClientEvmSigner
from x402.schemas import PaymentRequirements

from x402_meter.client._channel_book import BookedChannel, ChannelBook
from x402_meter.client._receipts import Payment, Receipt
from x402_meter.client._sessions import (
    ChannelBalance,
    ServerKey,
    SessionChannel,
    booked_server_key,
    server_key,
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
        deposit: the deposit size in atomic units; None: the server's ``minDeposit``, at
            most ``deposit_ceiling``.
    """

    def __init__(
        self,
        signer: ClientEvmSigner,
        *,
        max_sessions: int,
        deposit: int | None,
        deposit_ceiling: int | None = None,
        book: ChannelBook | None = None,
    ) -> None:
        self.signer = signer
        self.max_sessions = max_sessions
        self.deposit = deposit
        self.deposit_ceiling = deposit_ceiling
        """The most a server's suggested deposit is followed up to (None: no bound)."""
        self.book = book
        """The payer's durable channel book; None: channels live in this process only."""
        self._lock = threading.Lock()
        self._pools: dict[ServerKey, ChannelPool] = {}
        self._booked: dict[ServerKey, list[BookedChannel]] | None = None
        """The book's channels not resumed yet, by server (read on first need)."""

    # -- leasing -------------------------------------------------------------------------------

    def _take(self, key: ServerKey, wake: Callable[[], None]) -> SessionChannel | _Waiter:
        """A free channel of the server's pool (one with no charge pending first; a new one
        while there are fewer than ``max_sessions``), or the waiter queued for the next one
        given back."""
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = ChannelPool(key)
            live = [c for c in pool.channels if c.retired is None]
            # A channel whose last charge is known first: one still waiting for a streamed
            # answer's charge would make this request wait for it.
            free = min(
                (c for c in live if not c.leased),
                key=lambda c: c.pending is not None,
                default=None,
            )
            if free is None and len(live) < self.max_sessions:
                free = self._new_channel(pool)
            if free is not None:
                free.leased = True
                return free
            waiter = _Waiter(wake)
            pool.waiters.append(waiter)
            return waiter

    def _new_channel(self, pool: ChannelPool) -> SessionChannel:
        """Another channel for ``pool`` (under the lock): one of the book's with its server
        that no process holds, else a new one."""
        channel: SessionChannel | None = None
        for booked in self._booked_with(pool.key):
            adopted = self.book.adopt(booked.channel_id) if self.book is not None else None
            if adopted is not None and adopted.retired is None:
                channel = SessionChannel(pool, self.signer, book=self.book, booked=adopted)
                break
            if adopted is not None:  # retired: kept (and held) for close_sessions to refund
                pool.channels.append(
                    SessionChannel(pool, self.signer, book=self.book, booked=adopted)
                )
        if channel is None:
            channel = SessionChannel(pool, self.signer, book=self.book)
        pool.channels.append(channel)
        return channel

    def _booked_with(self, key: ServerKey) -> Iterator[BookedChannel]:
        """The book's channels with ``key``'s server not resumed yet, each given once."""
        if self.book is None:
            return
        if self._booked is None:
            self._booked = {}
            for booked in self.book.records():
                self._booked.setdefault(booked_server_key(booked), []).append(booked)
        waiting = self._booked.get(key, [])
        while waiting:
            yield waiting.pop(0)

    def resume_all(self) -> None:
        """Resume every channel of the book that no process holds (``close_sessions``
        takes back what earlier processes left in them), whatever its server."""
        if self.book is None:
            return
        with self._lock:
            self._booked = None  # read again: processes may have let go since
            keys = {booked_server_key(b) for b in self.book.records()}
            for key in keys:
                pool = self._pools.get(key)
                if pool is None:
                    pool = self._pools[key] = ChannelPool(key)
                for booked in self._booked_with(key):
                    adopted = self.book.adopt(booked.channel_id)
                    if adopted is not None:
                        pool.channels.append(
                            SessionChannel(pool, self.signer, book=self.book, booked=adopted)
                        )

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
                    channel = self._new_channel(pool)
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

    def received(self, payment: Payment, receipt: Receipt) -> None:
        """``payment``'s receipt was fetched: the charge of its channel's pending answer, if
        it is that one and no request holds the channel (a request applies it itself). A
        receipt not final yet leaves it pending: the channel's next request waits for it."""
        if payment.channel_id is None or not receipt.is_final:
            return
        for channel in self.channels():
            pending = channel.pending
            if pending is not None and pending.payment is payment and self.try_lease(channel):
                try:
                    if channel.pending is not None and channel.pending.payment is payment:
                        channel.apply_receipt(receipt)
                finally:
                    self.release(channel)
                return

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


__all__ = ["ChannelPool", "SessionChannels"]
