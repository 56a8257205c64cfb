"""Prices in exact decimals, charges in integer atomic units.

Prices are USD (asset units) per token, given as ``str``, ``int`` or ``Decimal``, never
``float`` (0.000002 has no exact binary representation). Charges are computed exactly and
rounded **up once**, at the end, to a whole atomic unit: the payer pays less than one atomic
unit (0.000001 USDC) more than the exact price, never more, and never less than it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import MAX_PREC, ROUND_CEILING, Context, Decimal, InvalidOperation, localcontext
from typing import Final, TypeAlias

from x402_meter.errors import ConfigurationError

PriceInput: TypeAlias = str | int | Decimal
"""A price as the user gives it: a decimal string, an int, or a Decimal (never a float)."""

MAX_PRICE_EXPONENT: Final = 12
"""Prices are refused from 10^13 per token up: beyond any real price, and far from overflow."""

_EXACT: Final = Context(prec=MAX_PREC)
"""Products, sums and power-of-ten scalings never round in this context: the default one
rounds to 28 significant digits."""


def parse_price(value: PriceInput, *, name: str = "price") -> Decimal:
    """An exact, finite, non-negative Decimal, or a ConfigurationError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        hint = (
            " (floats cannot hold most decimal prices exactly: pass a str)"
            if isinstance(value, float)
            else ""
        )
        raise ConfigurationError(
            f"{name} must be a str, int or Decimal, not {type(value).__name__}{hint}"
        )
    try:
        price = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise ConfigurationError(f"{name} must be a decimal number, got {value!r}") from None
    if not price.is_finite() or price < 0:
        raise ConfigurationError(f"{name} must be a finite number >= 0, got {value!r}")
    if price and price.adjusted() > MAX_PRICE_EXPONENT:
        raise ConfigurationError(
            f"{name} must be below 1e{MAX_PRICE_EXPONENT + 1} per token, got {value!r}"
        )
    return price


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """USD per token, by kind of token. ``cached_input`` defaults to the ``input`` price.

    Two optional terms make it a whole price plan, as sellers publish one per model:
    ``per_request``, a flat price for each answer served, on top of its tokens (a plan of
    only that has token prices of 0); and ``max_tokens``, the output one payment covers at
    this price, instead of the route's (``PriceTable`` entries may each have their own).

    >>> TokenPrice(input="0.0000005", output="0.0000015")
    >>> TokenPrice.per_million(input="0.50", output="1.50")   # the same prices
    >>> TokenPrice(input="0", output="0", per_request="0.01")  # one cent an answer
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal
    per_request: Decimal
    max_tokens: int | None

    def __init__(
        self,
        input: PriceInput,
        output: PriceInput,
        cached_input: PriceInput | None = None,
        *,
        per_request: PriceInput = 0,
        max_tokens: int | None = None,
    ) -> None:
        object.__setattr__(self, "input", parse_price(input, name="input price"))
        object.__setattr__(self, "output", parse_price(output, name="output price"))
        cached = (
            self.input
            if cached_input is None
            else parse_price(cached_input, name="cached_input price")
        )
        object.__setattr__(self, "cached_input", cached)
        object.__setattr__(self, "per_request", parse_price(per_request, name="per_request price"))
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0
        ):
            raise ConfigurationError(f"max_tokens must be a positive int, got {max_tokens!r}")
        object.__setattr__(self, "max_tokens", max_tokens)

    @classmethod
    def flat(cls, price: PriceInput) -> TokenPrice:
        """One price for every token."""
        value = parse_price(price, name="price_per_token")
        return cls(value, value, value)

    @classmethod
    def per_million(
        cls,
        input: PriceInput,
        output: PriceInput,
        cached_input: PriceInput | None = None,
        *,
        per_request: PriceInput = 0,
        max_tokens: int | None = None,
    ) -> TokenPrice:
        """Prices quoted per million tokens, as most LLM price lists are (``per_request``
        is per request still)."""
        cached = (
            None
            if cached_input is None
            else parse_price(cached_input, name="cached_input price").scaleb(-6, _EXACT)
        )
        return cls(
            parse_price(input, name="input price").scaleb(-6, _EXACT),
            parse_price(output, name="output price").scaleb(-6, _EXACT),
            cached,
            per_request=per_request,
            max_tokens=max_tokens,
        )

    @property
    def highest(self) -> Decimal:
        return max(self.input, self.output, self.cached_input)


def as_token_price(value: TokenPrice | PriceInput) -> TokenPrice:
    return value if isinstance(value, TokenPrice) else TokenPrice.flat(value)


def to_atomic(amount: Decimal, decimals: int) -> int:
    """``amount`` asset units as atomic units, rounded up to a whole unit."""
    return int(amount.scaleb(decimals, _EXACT).to_integral_value(ROUND_CEILING, _EXACT))


@dataclass(frozen=True, slots=True)
class Tariff:
    """A price list bound to an asset's decimals: what a request may cost, what it did cost."""

    price: TokenPrice
    decimals: int
    max_tokens: int
    """The output one authorization covers, at the highest of the prices."""
    input_tokens: int = 0
    """The request's prompt as the meter estimates it, at the input price: what the
    authorization covers on top of ``max_tokens``."""

    def __post_init__(self) -> None:
        if self.max_tokens <= 0:
            raise ConfigurationError(f"max_tokens must be a positive int, got {self.max_tokens!r}")
        if self.input_tokens < 0:
            raise ConfigurationError(f"input_tokens must be >= 0, got {self.input_tokens!r}")

    @property
    def max_amount(self) -> int:
        """The authorization's maximum: the price per request, the prompt at the input price
        and ``max_tokens`` at the highest of the prices, rounded up once."""
        with localcontext(_EXACT):
            prompt = max(self.price.input, self.price.cached_input) * self.input_tokens
            output = self.price.highest * self.max_tokens
            return to_atomic(self.price.per_request + prompt + output, self.decimals)

    def could_reach(self, tokens: int, maximum: int) -> bool:
        """Whether an answer of at most ``tokens`` tokens (of any kind) could cost
        ``maximum``: until it could, its count need not be taken."""
        # On every cap check: the context's own methods, not a localcontext (a third the cost).
        most = _EXACT.multiply(self.price.highest, tokens)
        if self.price.per_request:
            most = _EXACT.add(most, self.price.per_request)
        return to_atomic(most, self.decimals) >= maximum

    @property
    def prices_input(self) -> bool:
        """Whether the prompt costs anything (and so must be read to ask for it)."""
        return self.price.input > 0 or self.price.cached_input > 0

    def charge(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> int:
        """The exact cost of an answer served (its tokens and the price per request),
        rounded up once to an atomic unit, capped at ``max_amount``."""
        with localcontext(_EXACT):
            exact = (
                self.price.per_request
                + self.price.input * max(input_tokens - cached_input_tokens, 0)
                + self.price.cached_input * min(cached_input_tokens, input_tokens)
                + self.price.output * output_tokens
            )
        return min(to_atomic(exact, self.decimals), self.max_amount)


@dataclass(frozen=True, slots=True)
class PricedRequest:
    """What a price may depend on: the request, and the model it asks for."""

    method: str
    path: str
    model: str | None
    body: object
    """The JSON request body, or None when it is not JSON."""


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices per model, as LLM sellers publish them, with a price for everything else.

    The model is read from the request body (``"model"``); an exact name wins, then the
    longest table entry the model starts with (``"gpt-4o"`` prices ``"gpt-4o-2024-08-06"``).
    Without a ``default``, a request it cannot price is refused with 400, listing the priced
    ``models``: ``invalid_json_body`` (not JSON), ``model_required`` (no ``"model"``) or
    ``unknown_model`` (no price for that model).

    >>> PriceTable({"small": TokenPrice.per_million("0.15", "0.60"),
    ...             "large": TokenPrice.per_million("2.50", "10.00", cached_input="1.25")})
    """

    prices: tuple[tuple[str, TokenPrice], ...]
    default: TokenPrice | None

    def __init__(
        self,
        prices: Mapping[str, TokenPrice | PriceInput],
        default: TokenPrice | PriceInput | None = None,
    ) -> None:
        if not prices and default is None:
            raise ConfigurationError("a PriceTable needs at least one model price or a default")
        entries = tuple(sorted((str(m), as_token_price(p)) for m, p in prices.items()))
        object.__setattr__(self, "prices", entries)
        object.__setattr__(self, "default", None if default is None else as_token_price(default))

    def price_for(self, model: str | None) -> TokenPrice | None:
        if model:
            by_name = dict(self.prices)
            if model in by_name:
                return by_name[model]
            prefixes = [name for name in by_name if model.startswith(name)]
            if prefixes:
                return by_name[max(prefixes, key=len)]
        return self.default

    @property
    def highest(self) -> TokenPrice:
        """The dearest price in the table, for when no request is there to choose."""
        candidates = [price for _, price in self.prices] + ([self.default] if self.default else [])
        return max(candidates, key=lambda price: price.highest)


PriceFunction: TypeAlias = Callable[[PricedRequest], TokenPrice]
"""Anything custom: the price of one request, from the request (per user, per route, ...)."""
PriceModel: TypeAlias = TokenPrice | PriceTable | PriceFunction
"""How a route is priced: one price, a table by model, or a function of the request."""


def as_price_model(value: PriceModel | PriceInput) -> PriceModel:
    if isinstance(value, TokenPrice | PriceTable) or callable(value):
        return value
    return TokenPrice.flat(value)
