"""The settle deadline of a ledger row: its authorization's, less the facilitators' buffer
(a settlement retry never waits past halfway to it)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.ledger_rows import payment_row
from x402_meter.settlement import settle_deadline


def test_the_settle_deadline_is_the_permits_less_the_facilitators_buffer() -> None:
    upto = {"payload": {"permit2Authorization": {"deadline": "1700000300"}}}
    exact = {"payload": {"authorization": {"validBefore": "1700000300"}}}
    assert settle_deadline(payment_row(payload_json=json.dumps(upto))) == 1_700_000_294.0
    assert settle_deadline(payment_row(payload_json=json.dumps(exact))) == 1_700_000_294.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=25), inner),
    max_leaves=8,
)


@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"payload": st.fixed_dictionaries({"permit2Authorization": json_values})}
        ),
        st.fixed_dictionaries({"payload": st.fixed_dictionaries({"authorization": json_values})}),
    )
)
def test_the_settle_deadline_of_any_payload_is_a_time_or_none(payload: Any) -> None:
    deadline = settle_deadline(payment_row(payload_json=json.dumps(payload)))
    assert deadline is None or isinstance(deadline, float)
