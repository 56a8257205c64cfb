"""The deposit transactions admission hands to the request's ledger row: taken once, and
bounded (a request that never gets a row leaves nothing behind for long)."""

from __future__ import annotations

from x402_meter.schemes.channel_state import DepositTransactions


def test_a_deposit_transaction_is_taken_once_by_its_request() -> None:
    deposits = DepositTransactions()
    deposits.put("key-a", "0x" + "aa" * 32)
    assert deposits.take("key-b") is None
    assert deposits.take("key-a") == "0x" + "aa" * 32
    assert deposits.take("key-a") is None


def test_the_oldest_untaken_transactions_are_dropped_past_the_bound() -> None:
    deposits = DepositTransactions(size=3)
    for index in range(5):
        deposits.put(f"key-{index}", f"0x{index:064x}")
    assert [deposits.take(f"key-{index}") for index in range(5)] == [
        None,
        None,
        f"0x{2:064x}",
        f"0x{3:064x}",
        f"0x{4:064x}",
    ]
