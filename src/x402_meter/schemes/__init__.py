"""Payment schemes: what differs between ``exact`` and ``upto`` (``PaymentScheme``).

``scheme_named`` gives the built-in implementation of a scheme the configuration names.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from x402_meter.schemes.base import LocalCheck, PaymentScheme, Refusal
from x402_meter.schemes.exact import ExactScheme
from x402_meter.schemes.upto import UptoScheme

BUILT_IN: Final[Mapping[str, PaymentScheme]] = MappingProxyType(
    {"upto": UptoScheme(), "exact": ExactScheme()}
)
"""The schemes x402-meter implements, by name (read-only: schemes are stateless)."""


def scheme_named(name: str) -> PaymentScheme:
    """The implementation of scheme ``name``; ``KeyError`` for one not implemented."""
    return BUILT_IN[name]


__all__ = [
    "BUILT_IN",
    "ExactScheme",
    "LocalCheck",
    "PaymentScheme",
    "Refusal",
    "UptoScheme",
    "scheme_named",
]
