"""``PaymentLedger``, the public interface the paying transports keep a wallet's count through.

Whatever the order of reservations, signatures and failures, what the wallet signed never
counts for more than ``max_total``, a refusal records nothing, and a signed payment is never
given back.
"""

from __future__ import annotations

import threading
from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st
from x402.schemas import PaymentRequirements

from x402_meter.assets import Asset, default_asset
from x402_meter.client import PaymentLedger, Receipt, SpendCapExceededError

NETWORK: Final = "eip155:8453"
USDC: Final[Asset] = default_asset(NETWORK)
PAYER: Final = "0x" + "22" * 20
MAX_TOTAL: Final = 10_000


def offer(amount: int) -> PaymentRequirements:
    return PaymentRequirements(
        scheme="upto",
        network=NETWORK,
        asset=USDC.address,
        amount=str(amount),
        pay_to="0x" + "11" * 20,
        max_timeout_seconds=60,
        extra={},
    )


def ledger(max_total: int | None = MAX_TOTAL) -> PaymentLedger:
    return PaymentLedger(payer=PAYER, asset=USDC, max_total=max_total, prover=None)


# each step: an offer's amount, and whether its payment gets signed (else it fails unsigned)
steps = st.lists(st.tuples(st.integers(0, 4 * MAX_TOTAL), st.booleans()), max_size=30)


@given(steps)
def test_what_was_signed_never_counts_past_max_total(plan: list[tuple[int, bool]]) -> None:
    book = ledger()
    signed = 0
    for amount, signs in plan:
        if signed + amount > MAX_TOTAL:
            before = book.payments
            with pytest.raises(SpendCapExceededError) as refused:
                book.reserve(offer(amount), method="POST", url="https://seller/v1")
            assert book.payments == before  # nothing recorded
            assert refused.value.left == MAX_TOTAL - signed
            continue
        payment = book.reserve(offer(amount), method="POST", url="https://seller/v1")
        if signs:
            book.record_signed(payment, {})
            signed += amount
        book.release(payment)  # the request failed: only an unsigned payment is given back
        assert book.spent == signed <= MAX_TOTAL
    assert all(p.signed for p in book.payments)
    assert sum(p.max_amount for p in book.payments) == signed


@given(st.lists(st.integers(0, 4 * MAX_TOTAL), max_size=20))
def test_without_max_total_nothing_is_refused(amounts: list[int]) -> None:
    book = ledger(max_total=None)
    for amount in amounts:
        book.reserve(offer(amount), method="POST", url="https://seller/v1")
    assert book.spent == sum(amounts)


def test_payments_reserved_at_once_from_threads_stay_within_max_total() -> None:
    book = ledger()
    start = threading.Barrier(16)
    refusals: list[SpendCapExceededError] = []

    def pay() -> None:
        start.wait()
        try:
            payment = book.reserve(offer(3_000), method="POST", url="https://seller/v1")
        except SpendCapExceededError as refused:
            refusals.append(refused)
        else:
            book.record_signed(payment, {})

    threads = [threading.Thread(target=pay) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(book.payments), len(refusals)) == (3, 13)
    assert book.spent == 9_000


def test_a_receipt_never_lowers_what_a_payment_counts() -> None:
    book = ledger()
    payment = book.reserve(offer(5_000), method="POST", url="https://seller/v1")
    book.record_signed(payment, {})
    book.record_receipt(payment, Receipt.from_json({"status": "settled", "amount": "0"}))
    assert book.spent == 5_000
    assert book.unproven() == []  # without a prover nothing can lower it
