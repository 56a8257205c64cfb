"""Pricing: prices are exact decimals, charges are integer atomic units rounded up once."""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x402_meter.errors import ConfigurationError
from x402_meter.pricing import Tariff, TokenPrice

DECIMALS = st.sampled_from([0, 6, 18])
TOKENS = st.integers(min_value=0, max_value=10**9)


@st.composite
def price_strings(draw: st.DrawFn) -> str:
    """A non-negative decimal string with up to 12 fractional digits."""
    whole = draw(st.integers(min_value=0, max_value=10**9))
    places = draw(st.integers(min_value=0, max_value=12))
    if places == 0:
        return str(whole)
    fraction = draw(st.integers(min_value=0, max_value=10**places - 1))
    return f"{whole}.{fraction:0{places}d}"


@st.composite
def tariffs(draw: st.DrawFn) -> Tariff:
    input_price, output_price, cached_price = (draw(price_strings()) for _ in range(3))
    price = TokenPrice(input_price, output_price, cached_price)
    return Tariff(price, draw(DECIMALS), draw(st.integers(min_value=1, max_value=10**9)))


def atomic_units(decimals: int) -> int:
    """Atomic units per asset unit (``10**n`` with a non-literal ``n`` is untyped)."""
    return int(10**decimals)


def exact_cost_atomic(
    tariff: Tariff, input_tokens: int, output_tokens: int, cached: int
) -> Fraction:
    """The cost in atomic units as an exact rational, independent of any Decimal context."""
    price = tariff.price
    cost = (
        Fraction(price.input) * max(input_tokens - cached, 0)
        + Fraction(price.cached_input) * min(cached, input_tokens)
        + Fraction(price.output) * output_tokens
    )
    return cost * atomic_units(tariff.decimals)


def exact_max_atomic(tariff: Tariff) -> int:
    price = tariff.price
    highest = max(Fraction(price.input), Fraction(price.output), Fraction(price.cached_input))
    return math.ceil(highest * tariff.max_tokens * atomic_units(tariff.decimals))


@settings(max_examples=400)
@given(tariff=tariffs(), input_tokens=TOKENS, output_tokens=TOKENS, cached=TOKENS)
def test_charge_is_the_exact_cost_rounded_up_once_and_capped(
    tariff: Tariff, input_tokens: int, output_tokens: int, cached: int
) -> None:
    exact = exact_cost_atomic(tariff, input_tokens, output_tokens, cached)
    expected = min(math.ceil(exact), exact_max_atomic(tariff))
    assert tariff.charge(input_tokens, output_tokens, cached) == expected


@settings(max_examples=400)
@given(tariff=tariffs(), input_tokens=TOKENS, output_tokens=TOKENS, cached=TOKENS)
def test_charge_exceeds_the_exact_cost_by_less_than_one_atomic_unit_unless_capped(
    tariff: Tariff, input_tokens: int, output_tokens: int, cached: int
) -> None:
    charge = tariff.charge(input_tokens, output_tokens, cached)
    exact = exact_cost_atomic(tariff, input_tokens, output_tokens, cached)
    if charge == tariff.max_amount:
        assert charge <= math.ceil(exact)
    else:
        assert 0 <= charge - exact < 1


@settings(max_examples=300)
@given(tariff=tariffs(), input_tokens=TOKENS, output_tokens=TOKENS, cached=TOKENS)
def test_charge_never_exceeds_max_amount(
    tariff: Tariff, input_tokens: int, output_tokens: int, cached: int
) -> None:
    assert tariff.charge(input_tokens, output_tokens, cached) <= tariff.max_amount


@settings(max_examples=300)
@given(
    tariff=tariffs(),
    input_tokens=TOKENS,
    output_tokens=TOKENS,
    cached=TOKENS,
    more_input=TOKENS,
    more_output=TOKENS,
)
def test_charge_is_monotone_in_input_and_output_tokens(
    tariff: Tariff,
    input_tokens: int,
    output_tokens: int,
    cached: int,
    more_input: int,
    more_output: int,
) -> None:
    before = tariff.charge(input_tokens, output_tokens, cached)
    after = tariff.charge(input_tokens + more_input, output_tokens + more_output, cached)
    assert after >= before


@settings(max_examples=200)
@given(price=price_strings(), decimals=DECIMALS, max_tokens=st.integers(1, 10**9))
def test_max_amount_is_max_tokens_at_the_highest_price_rounded_up(
    price: str, decimals: int, max_tokens: int
) -> None:
    tariff = Tariff(TokenPrice("0", price, "0"), decimals, max_tokens)
    assert tariff.max_amount == math.ceil(Fraction(price) * max_tokens * 10**decimals)


def test_max_amount_of_a_flat_price_is_exact() -> None:
    assert Tariff(TokenPrice.flat("0.000002"), 6, 4096).max_amount == 8192


def test_charge_rounds_a_fraction_of_an_atomic_unit_up() -> None:
    tariff = Tariff(TokenPrice.flat("0.0000001"), 6, 4096)
    assert tariff.charge(1, 0) == 1
    assert tariff.charge(10, 0) == 1
    assert tariff.charge(11, 0) == 2


def test_charge_is_exact_beyond_28_significant_digits() -> None:
    # Python's default Decimal context keeps 28 digits: an exact price must not depend on it.
    price = "123456789.123456789012"
    tariff = Tariff(TokenPrice(price, "0"), 18, 10**12)
    tokens = 987_654_321_987
    assert tariff.charge(tokens, 0) == Fraction(price) * tokens * 10**18
    assert tariff.max_amount == Fraction(price) * 10**12 * 10**18


def test_charge_of_nothing_is_zero() -> None:
    assert Tariff(TokenPrice.flat("0.000002"), 6, 4096).charge(0, 0) == 0


def test_per_million_prices_equal_per_token_prices() -> None:
    assert TokenPrice.per_million("0.5", "1.5") == TokenPrice("0.0000005", "0.0000015")


def test_per_million_scales_the_cached_input_price_too() -> None:
    price = TokenPrice.per_million("3", "15", cached_input="0.3")
    assert price.cached_input == Decimal("0.0000003")


def test_cached_input_price_defaults_to_the_input_price() -> None:
    assert TokenPrice("0.000001", "0.000004").cached_input == Decimal("0.000001")
    assert TokenPrice.per_million("1", "4").cached_input == Decimal("0.000001")


def test_flat_price_applies_to_every_kind_of_token() -> None:
    price = TokenPrice.flat("0.000002")
    assert price.input == price.output == price.cached_input == Decimal("0.000002")


def test_cached_tokens_are_priced_at_the_cached_input_price() -> None:
    tariff = Tariff(TokenPrice("0.00001", "0.00004", cached_input="0.000001"), 6, 10**6)
    # 100 input tokens of which 60 cached: 40 x 10 + 60 x 1 + 5 output x 40 atomic units.
    assert tariff.charge(100, 5, 60) == 40 * 10 + 60 * 1 + 5 * 40


def test_cached_tokens_beyond_the_input_tokens_are_clamped_to_the_input_tokens() -> None:
    tariff = Tariff(TokenPrice("0.00001", "0.00004", cached_input="0.000001"), 6, 10**6)
    assert tariff.charge(10, 0, 25) == tariff.charge(10, 0, 10) == 10 * 1


def test_prices_accept_int_decimal_and_padded_strings() -> None:
    assert TokenPrice(1, Decimal("0.5"), " 0.25 ") == TokenPrice("1", "0.5", "0.25")


@pytest.mark.parametrize(
    "bad",
    [0.000002, 1.0, True, False, [1], "NaN", "nan", "sNaN", "Infinity", "-Infinity",
     "-1", -1, "-0.000001", Decimal("-1"), Decimal("NaN"), Decimal("Infinity"), "", "  ",
     "abc", "1.2.3", "0x10", "$1", "1e"],
)  # fmt: skip
@pytest.mark.parametrize(
    ("argument", "build"),
    [
        ("input price", lambda bad: TokenPrice(bad, "1")),
        ("output price", lambda bad: TokenPrice("1", bad)),
        ("cached_input price", lambda bad: TokenPrice("1", "1", cached_input=bad)),
        ("input price", lambda bad: TokenPrice.per_million(bad, "1")),
        ("output price", lambda bad: TokenPrice.per_million("1", bad)),
        ("cached_input price", lambda bad: TokenPrice.per_million("1", "1", bad)),
        ("price_per_token", lambda bad: TokenPrice.flat(bad)),
    ],
)
def test_an_unusable_price_is_rejected_naming_the_argument(
    bad: Any, argument: str, build: Callable[[Any], object]
) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        build(bad)


def test_a_missing_input_or_output_price_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="input price"):
        TokenPrice(None, "1")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="output price"):
        TokenPrice("1", None)  # type: ignore[arg-type]


def test_a_float_price_is_rejected_with_a_hint_to_pass_a_string() -> None:
    with pytest.raises(ConfigurationError, match="pass a str"):
        TokenPrice.flat(0.000002)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_tokens", [0, -1])
def test_a_tariff_without_a_positive_token_cap_is_rejected(max_tokens: int) -> None:
    with pytest.raises(ConfigurationError, match="max_tokens"):
        Tariff(TokenPrice.flat("0.000002"), 6, max_tokens)


@pytest.mark.parametrize("price", ["1e999999", "1e13", "99999999999999"])
def test_absurdly_large_prices_are_refused_when_configured(price: str) -> None:
    with pytest.raises(ConfigurationError, match="price_per_token"):
        TokenPrice.flat(price)


# A price per request and a cover per price: the terms of a seller's plan, per model.


@settings(max_examples=200)
@given(
    per_request=price_strings(),
    price=price_strings(),
    decimals=DECIMALS,
    max_tokens=st.integers(1, 10**6),
    input_tokens=st.integers(0, 10**6),
    output_tokens=st.integers(0, 10**6),
)
def test_a_price_per_request_is_added_once_to_the_charge_and_the_maximum(
    per_request: str,
    price: str,
    decimals: int,
    max_tokens: int,
    input_tokens: int,
    output_tokens: int,
) -> None:
    plan = Tariff(TokenPrice(price, price, per_request=per_request), decimals, max_tokens)
    units = atomic_units(decimals)
    exact = (Fraction(per_request) + Fraction(price) * (input_tokens + output_tokens)) * units
    maximum = math.ceil((Fraction(per_request) + Fraction(price) * max_tokens) * units)
    assert plan.max_amount == maximum
    assert plan.charge(input_tokens, output_tokens) == min(math.ceil(exact), maximum)


def test_a_flat_plan_charges_its_price_per_request_whatever_the_tokens() -> None:
    flat = Tariff(TokenPrice("0", "0", per_request="0.01"), 6, 4096)
    assert flat.max_amount == 10_000
    assert flat.charge(0, 0) == flat.charge(500, 4096) == 10_000


def test_per_million_keeps_the_price_per_request_per_request() -> None:
    price = TokenPrice.per_million("1", "2", per_request="0.001", max_tokens=64)
    assert (price.per_request, price.max_tokens) == (Decimal("0.001"), 64)


@pytest.mark.parametrize("max_tokens", [0, -1, True, 1.5, "64"])
def test_a_price_with_a_cover_that_is_no_positive_int_is_rejected(max_tokens: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_tokens must be a positive int"):
        TokenPrice("0", "0.000001", max_tokens=max_tokens)


def test_a_negative_price_per_request_is_rejected_naming_it() -> None:
    with pytest.raises(ConfigurationError, match="per_request price"):
        TokenPrice("0", "0.000001", per_request="-0.01")


@settings(max_examples=300)
@given(
    tariff=tariffs(),
    per_request=price_strings(),
    tokens=st.integers(0, 10**7),
    cached=st.integers(0, 10**7),
)
def test_could_reach_is_never_false_when_that_many_tokens_can_cost_the_maximum(
    tariff: Tariff, per_request: str, tokens: int, cached: int
) -> None:
    """The cap's early-out: false only when no split of ``tokens`` can cost the maximum."""
    price = tariff.price
    plan = Tariff(
        TokenPrice(price.input, price.output, price.cached_input, per_request=per_request),
        tariff.decimals,
        tariff.max_tokens,
    )
    maximum = plan.max_amount
    if not plan.could_reach(tokens, maximum):
        for input_tokens in (0, tokens // 2, tokens):
            charge = plan.charge(input_tokens, tokens - input_tokens, min(cached, input_tokens))
            assert charge < maximum
