"""Who may call the self-hosted facilitator, and for which payees it settles.

A facilitator that anyone can call is a free relayer (it pays the gas of strangers'
settlements) and, for ``upto``, an open door: whoever calls ``/settle`` first picks the
amount, so a payer could settle its own authorization for 1 unit while the seller's answer
streams. ``ApiKeys`` closes ``/verify`` and ``/settle`` to callers without a key;
``PayeeAllowlist`` limits them to the ``payTo`` addresses this facilitator serves.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from x402_meter.errors import FacilitatorAccessError as FacilitatorAccessError

API_KEYS_ENV: Final = "X402_FACILITATOR_API_KEYS"
"""Server side: the keys ``x402-meter facilitator`` accepts, comma separated."""
PAY_TO_ENV: Final = "X402_FACILITATOR_PAY_TO"
"""Server side: the payees ``x402-meter facilitator`` serves, comma separated."""
MIN_KEY_LENGTH: Final = 16
_KEY: Final = re.compile(r"[\x21-\x7e]+")
"""Printable ASCII with no spaces or commas: a key must fit one header value and one list item."""
_ADDRESS: Final = re.compile(r"0x[0-9a-fA-F]{40}")
_BEARER: Final = "bearer "


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """The credentials ``/verify`` and ``/settle`` accept.

    Only SHA-256 digests are kept, and a presented key is compared with every one of them
    in constant time (``hmac.compare_digest``, no early exit), so neither the timing of an
    answer nor a memory dump of the configuration gives a key away. The keys are never
    logged or shown in ``repr``.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        digests: list[bytes] = []
        for key in keys:
            if not _KEY.fullmatch(key) or "," in key:
                raise FacilitatorAccessError(
                    "an API key must be printable ASCII without spaces or commas"
                )
            if len(key) < MIN_KEY_LENGTH:
                raise FacilitatorAccessError(
                    f"an API key must be at least {MIN_KEY_LENGTH} characters long"
                )
            digests.append(_digest(key))
        if not digests:
            raise FacilitatorAccessError("no API key given")
        self._digests: tuple[bytes, ...] = tuple(dict.fromkeys(digests))

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"ApiKeys(<{len(self._digests)} keys>)"

    @classmethod
    def parse_list(cls, text: str) -> list[str]:
        """Keys from a comma-separated value (an environment variable); blanks are skipped."""
        return [part.strip() for part in text.split(",") if part.strip()]

    @classmethod
    def read_file(cls, path: Path) -> list[str]:
        """Keys from a file: one per line; blank lines and ``#`` comments are skipped."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FacilitatorAccessError(f"cannot read the API keys file {path}: {exc}") from exc
        keys = []
        for line in text.splitlines():
            key = line.split("#", 1)[0].strip()
            if key:
                keys.append(key)
        return keys

    def presented(self, headers: Mapping[str, str]) -> str | None:
        """The key a request carries: ``Authorization: Bearer <key>`` or ``X-API-Key``."""
        authorization = headers.get("authorization")
        if authorization is not None:
            if authorization[: len(_BEARER)].lower() != _BEARER:
                return None
            return authorization[len(_BEARER) :].strip()
        return headers.get("x-api-key")

    def accepts(self, key: str) -> bool:
        """Whether ``key`` is one of the configured keys (constant time in the match)."""
        digest = _digest(key)
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return matched


class PayeeAllowlist:
    """The ``payTo`` addresses this facilitator verifies and settles for (case-insensitive)."""

    def __init__(self, addresses: Iterable[str]) -> None:
        allowed = set()
        for address in addresses:
            if not _ADDRESS.fullmatch(address):
                raise FacilitatorAccessError(
                    f"a payee must be an EVM address (0x + 40 hex digits), got {address!r}"
                )
            allowed.add(address.lower())
        if not allowed:
            raise FacilitatorAccessError("no payee address given")
        self._allowed: frozenset[str] = frozenset(allowed)

    def __len__(self) -> int:
        return len(self._allowed)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and address.lower() in self._allowed

    @classmethod
    def parse_list(cls, text: str) -> list[str]:
        """Addresses from a comma-separated value (an environment variable)."""
        return [part.strip() for part in text.split(",") if part.strip()]
