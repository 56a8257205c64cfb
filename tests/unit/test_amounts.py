"""parse_uint: one canonical spelling per uint256, everything else refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from x402_meter.protocol.amounts import UINT256_MAX, NotCanonicalUintError, parse_uint


@given(st.integers(min_value=0, max_value=UINT256_MAX))
def test_the_decimal_spelling_of_every_uint256_parses_to_itself(number: int) -> None:
    assert parse_uint(str(number)) == number


@given(st.text(max_size=90))
def test_any_text_parses_only_if_it_is_the_canonical_spelling_of_its_number(text: str) -> None:
    try:
        number = parse_uint(text)
    except NotCanonicalUintError:
        return
    assert str(number) == text


@pytest.mark.parametrize(
    "value",
    [
        "+10000",
        "-0",
        " 10000",
        "10000 ",
        "10000\n",
        "10_000",
        "010000",
        "00",
        "1e4",
        "1.0",
        "0x2710",
        "１００００",
        "",
        str(UINT256_MAX + 1),
        10000,
        0,
        True,
        1e4,
        None,
        ["10000"],
        b"10000",
    ],
)
def test_non_canonical_values_are_refused(value: object) -> None:
    with pytest.raises(NotCanonicalUintError):
        parse_uint(value)


def test_zero_and_the_largest_uint256_are_canonical() -> None:
    assert parse_uint("0") == 0
    assert parse_uint(str(UINT256_MAX)) == UINT256_MAX
