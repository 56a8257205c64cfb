"""One request through a paying transport, and the one ``ContextVar`` that carries it.

Why a context variable: the x402 SDK calls the wallet's hooks (before/after signing, on
failure) with its own context objects only, deep inside its transport; the hooks need to know
which request they pay for (to record the payment against it, and to read what the chain
proves of earlier payments through the same transport before refusing for ``max_total``).
A ``ContextVar`` reaches them in the same task or thread without a module-level registry;
it is set and reset only here, by ``paying``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from x402_meter.client._ledger import PaymentLedger
from x402_meter.client._receipts import Payment, Receipt

if TYPE_CHECKING:
    from x402_meter.client._sessions import SessionChannel

Resolve = Callable[[], Awaitable[None] | None]
"""Reads what the chain proves of the wallet's unproven payments (async or sync transport)."""
FetchReceipt = Callable[[Payment, float], Awaitable[Receipt] | Receipt]
"""GETs a payment's receipt, waiting up to so many seconds (async or sync transport)."""


class Attempt:
    """One request through a paying transport: what it is, and the payment made for it."""

    def __init__(
        self, method: str, url: str, resolve: Resolve, fetch_receipt: FetchReceipt | None = None
    ) -> None:
        self.method = method
        self.url = url
        self.resolve = resolve
        self.fetch_receipt = fetch_receipt
        """Reads a session channel's pending receipt before it signs again (None: the SDK
        client is used directly, and a streamed answer's charge stays unknown)."""
        self.payment: Payment | None = None
        self.channel: SessionChannel | None = None
        """The session channel this request leased, until its answer is done."""
        self.defers_book_writes = False
        """Whether a channel's changes wait for ``write_book`` (the async transport writes
        them in a worker thread, not on its event loop) instead of being written at once."""
        self.unwritten: list[SessionChannel] = []
        """The channels changed since their last write, while writes are deferred."""

    def take_channel(self) -> SessionChannel | None:
        """The leased channel, which the caller now gives back (once)."""
        channel, self.channel = self.channel, None
        return channel

    def defer_book_write(self, channel: SessionChannel) -> bool:
        """Note that ``channel`` changed; False when writes are not deferred (write now)."""
        if not self.defers_book_writes:
            return False
        if channel not in self.unwritten:
            self.unwritten.append(channel)
        return True

    def write_book(self) -> None:
        """Write the channels changed since their last write to the book. Blocking."""
        channels, self.unwritten = self.unwritten, []
        for channel in channels:
            channel.save()

    def forget(self, ledger: PaymentLedger) -> None:
        """Nothing was signed for this attempt: give its reservation back to ``ledger``."""
        payment = self.payment
        if payment is not None and not payment.signed:
            ledger.release(payment)
            self.payment = None


def _nothing_to_resolve() -> None:
    return None


_CURRENT: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar(
    "x402_meter_client_attempt", default=None
)


@contextlib.contextmanager
def paying(attempt: Attempt) -> Iterator[Attempt]:
    """Make ``attempt`` the one the SDK hooks see while the transport pays for it."""
    token = _CURRENT.set(attempt)
    try:
        yield attempt
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def book_writes_deferred() -> Iterator[Attempt]:
    """Outside a request (reading a pending receipt for ``balance()``): the channel changes
    wait for ``write_book`` on the attempt given, as in the async transport's requests."""
    attempt = Attempt("", "", _nothing_to_resolve)
    attempt.defers_book_writes = True
    with paying(attempt):
        yield attempt


def current_attempt() -> Attempt:
    """The attempt being paid for; a blank one when the SDK client is used directly, not
    through a paying transport (its payments are recorded without method and URL)."""
    attempt = _CURRENT.get()
    if attempt is None:
        attempt = Attempt("", "", _nothing_to_resolve)
        _CURRENT.set(attempt)
    return attempt
