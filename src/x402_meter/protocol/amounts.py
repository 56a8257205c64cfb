"""Canonical unsigned integers on the wire: the only spelling of an amount we accept.

x402 carries every uint256 (amounts, nonces, deadlines, validity bounds) as a decimal
string. Python's ``int()`` is far more lenient than that: it takes ``"+10"``, ``" 10 "``,
``"1_0"``, ``"010"`` and full-width digits, and JSON numbers arrive as ``int`` (or ``bool``,
or ``float``). Two spellings of one number let a payload mean different things to the
middleware, the facilitator and the chain, so every money field goes through ``parse_uint``
and anything but the one canonical spelling is refused.
"""

from __future__ import annotations

import re
from typing import Final

from x402_meter.errors import NotCanonicalUintError as NotCanonicalUintError

UINT256_MAX: Final = 2**256 - 1
_CANONICAL: Final = re.compile(r"0|[1-9][0-9]{0,77}")
"""ASCII digits only (``[0-9]``, not ``\\d``), no leading zero, at most 78 digits."""


def parse_uint(value: object) -> int:
    """The uint256 that ``value`` spells; ``NotCanonicalUintError`` unless it is canonical.

    Canonical: a ``str`` of ASCII digits with no sign, whitespace, underscore, exponent or
    leading zero ("0" itself is fine), at most ``2**256 - 1``. JSON numbers (``int``,
    ``float``, ``bool``) are refused: the protocol sends strings, and a number that went
    through a float may not be the number that was signed.
    """
    if not isinstance(value, str):
        raise NotCanonicalUintError(f"expected a decimal string, got {type(value).__name__}")
    if _CANONICAL.fullmatch(value) is None:
        raise NotCanonicalUintError(f"not a canonical unsigned decimal: {value[:80]!r}")
    number = int(value)
    if number > UINT256_MAX:
        raise NotCanonicalUintError("larger than 2**256 - 1")
    return number
