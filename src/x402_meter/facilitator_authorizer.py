"""The facilitator's receiver-authorizer key: where it comes from and how it is checked.

A batch-settlement channel names a ``receiverAuthorizer``: the key whose EIP-712 signature
lets claims (``claimWithSignature``) and cooperative refunds (``refundWithSignature``) go
through. A facilitator that holds such a key advertises its address in ``/supported``, and
servers that have no key of their own put that address into their channels and leave the
signing to the facilitator. Without one, the facilitator advertises none and servers sign
their own claims and refunds.

The key is a secret like the settling key: it comes from the environment
(``X402_FACILITATOR_RECEIVER_AUTHORIZER_KEY``) or a file (``--receiver-authorizer-key-file``),
never from the command line, and it is never logged or echoed in an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner

from x402_meter.errors import FacilitatorConfigError

RECEIVER_AUTHORIZER_KEY_ENV: Final = "X402_FACILITATOR_RECEIVER_AUTHORIZER_KEY"
"""Server side: the receiver-authorizer private key of ``x402-meter facilitator``."""
_PRIVATE_KEY: Final = re.compile(r"(0x)?[0-9a-fA-F]{64}")
_SECP256K1_ORDER: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _read_key_file(path: Path) -> str:
    """The one key in ``path``; blank lines and ``#`` comments are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FacilitatorConfigError(
            f"cannot read the receiver-authorizer key file {path}: {exc}"
        ) from exc
    keys = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    keys = [key for key in keys if key]
    if len(keys) != 1:
        raise FacilitatorConfigError(
            f"the receiver-authorizer key file {path} must hold exactly one key (found {len(keys)})"
        )
    return keys[0]


def receiver_authorizer(
    environ: Mapping[str, str], key_file: Path | None
) -> LocalAuthorizerSigner | None:
    """The signer for the key in ``environ`` or ``key_file`` (not both); None if neither.

    A malformed key is refused at startup with a message that does not contain it.
    """
    from_env = environ.get(RECEIVER_AUTHORIZER_KEY_ENV, "").strip()
    if from_env and key_file is not None:
        raise FacilitatorConfigError(
            f"{RECEIVER_AUTHORIZER_KEY_ENV} and --receiver-authorizer-key-file contradict"
            " each other: give the key once"
        )
    key = _read_key_file(key_file) if key_file is not None else from_env
    if not key:
        return None
    signer = authorizer_signer(key)
    if signer is None:
        raise FacilitatorConfigError(
            "the receiver-authorizer key must be a secp256k1 private key: 64 hex digits,"
            " optionally 0x-prefixed"
        )
    return signer


def authorizer_signer(key: str) -> LocalAuthorizerSigner | None:
    """The signer of a receiver-authorizer private key (64 hex digits, optionally
    ``0x``-prefixed, in the curve's range); None if ``key`` is not one (the caller says so,
    without the key)."""
    if not _PRIVATE_KEY.fullmatch(key) or not 0 < int(key, 16) < _SECP256K1_ORDER:
        return None
    return LocalAuthorizerSigner(key if key.startswith("0x") else f"0x{key}")
