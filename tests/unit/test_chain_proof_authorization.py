"""What the paying client reads from a signed payload to find its settlement on chain."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from web3 import Web3

from x402_meter.client.chain_proof import Permit2Authorization

OWNER = "0x" + "ab" * 20
TOKEN = "0x" + "cd" * 20
SIGNED: dict[str, Any] = {
    "permit2Authorization": {
        "from": OWNER,
        "permitted": {"token": TOKEN, "amount": "8192"},
        "spender": "0x4020A4f3b7b90ccA423B9fabCc0CE57C6C240002",
        "nonce": str(2**255 + 7),
        "deadline": "1700000300",
        "witness": {"to": OWNER, "facilitator": OWNER, "validAfter": "0"},
    },
    "signature": "0x" + "00" * 65,
}
SCALAR = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
ADDRESS = st.sampled_from([OWNER, TOKEN, OWNER.upper(), "0x12", ""]) | SCALAR
NUMBER = st.integers(min_value=0).map(str) | SCALAR
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "from": ADDRESS,
        "permitted": st.fixed_dictionaries({}, optional={"token": ADDRESS}) | SCALAR,
        "nonce": NUMBER,
        "deadline": NUMBER,
    },
)


def test_an_upto_payload_gives_its_nonce_owner_token_and_deadline() -> None:
    assert Permit2Authorization.from_payload(SIGNED) == Permit2Authorization(
        owner=Web3.to_checksum_address(OWNER),
        token=Web3.to_checksum_address(TOKEN),
        nonce=2**255 + 7,
        deadline=1_700_000_300,
    )


def test_an_exact_payload_has_no_permit2_authorization() -> None:
    exact = {"authorization": {"from": OWNER, "nonce": "0x" + "11" * 32}, "signature": "0x"}
    assert Permit2Authorization.from_payload(exact) is None


@given(FIELDS)
def test_any_shape_reads_as_an_authorization_or_none_never_an_error(
    authorization: dict[str, Any],
) -> None:
    """Nothing odd in a payload raises: it just proves nothing (counts at its maximum)."""
    read = Permit2Authorization.from_payload({"permit2Authorization": authorization})
    if read is not None:
        assert all(str(authorization[key]).isdigit() for key in ("nonce", "deadline"))
        assert int(authorization["nonce"]) == read.nonce
        assert int(authorization["deadline"]) == read.deadline
        assert read.owner.lower() == str(authorization["from"]).lower()


@given(SCALAR | st.lists(SCALAR, max_size=3))
def test_a_permit2_authorization_that_is_not_an_object_reads_as_none(value: Any) -> None:
    assert Permit2Authorization.from_payload({"permit2Authorization": value}) is None
