"""``PaymentRecord.replace``: the row rewritten as ``dataclasses.replace`` rewrites it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.ledger_rows import payment_row
from x402_meter.store import LedgerState

FIELDS = [field.name for field in dataclasses.fields(payment_row())]
VALUES = (
    st.none()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.sampled_from(LedgerState)
)


@given(st.dictionaries(st.sampled_from(FIELDS), VALUES))
def test_replace_makes_what_dataclasses_replace_makes(changes: dict[str, Any]) -> None:
    row = payment_row()
    before = dataclasses.astuple(row)
    assert row.replace(**changes) == dataclasses.replace(row, **changes)
    assert dataclasses.astuple(row) == before  # the row itself is left as it was


def test_replace_refuses_a_field_the_row_does_not_have() -> None:
    with pytest.raises(TypeError, match="'amount_units'"):
        payment_row().replace(amount=1, amount_units=1)
