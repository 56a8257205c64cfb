"""The facilitator's receiver-authorizer key: from the environment or a file, never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from x402_meter.devstack.accounts import RECEIVER_AUTHORIZER
from x402_meter.errors import FacilitatorConfigError
from x402_meter.facilitator_authorizer import RECEIVER_AUTHORIZER_KEY_ENV, receiver_authorizer

KEY = RECEIVER_AUTHORIZER.private_key  # anvil's public dev key


def test_no_key_means_no_authorizer() -> None:
    assert receiver_authorizer({}, None) is None
    assert receiver_authorizer({RECEIVER_AUTHORIZER_KEY_ENV: "  "}, None) is None


@pytest.mark.parametrize("spelling", [KEY, KEY.removeprefix("0x"), f" {KEY}\n"])
def test_a_key_from_the_environment_signs_as_its_address(spelling: str) -> None:
    signer = receiver_authorizer({RECEIVER_AUTHORIZER_KEY_ENV: spelling}, None)
    assert signer is not None
    assert signer.address == RECEIVER_AUTHORIZER.address


def test_a_key_file_skips_blank_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "authorizer.key"
    path.write_text(f"# the receiver authorizer of seller A\n\n{KEY}  # rotated 2025-01\n")
    signer = receiver_authorizer({}, path)
    assert signer is not None
    assert signer.address == RECEIVER_AUTHORIZER.address


def test_a_key_file_with_two_keys_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "authorizer.key"
    path.write_text(f"{KEY}\n{KEY}\n")
    with pytest.raises(FacilitatorConfigError, match="exactly one key"):
        receiver_authorizer({}, path)


def test_a_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FacilitatorConfigError, match="cannot read"):
        receiver_authorizer({}, tmp_path / "absent")


def test_the_environment_and_a_file_together_contradict(tmp_path: Path) -> None:
    path = tmp_path / "authorizer.key"
    path.write_text(KEY)
    with pytest.raises(FacilitatorConfigError, match="contradict"):
        receiver_authorizer({RECEIVER_AUTHORIZER_KEY_ENV: KEY}, path)


@pytest.mark.parametrize(
    "bad",
    [
        KEY[:-1],  # 63 hex digits
        KEY + "0",
        KEY[:-1] + "g",
        "0x" + "00" * 32,  # zero is no key
        "0x" + "ff" * 32,  # above the curve's order
    ],
)
def test_a_malformed_key_is_refused_without_being_echoed(bad: str) -> None:
    with pytest.raises(FacilitatorConfigError) as refused:
        receiver_authorizer({RECEIVER_AUTHORIZER_KEY_ENV: bad}, None)
    assert bad.removeprefix("0x")[:16] not in str(refused.value)
