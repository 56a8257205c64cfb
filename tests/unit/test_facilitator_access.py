"""The facilitator's keys and payees, and how our client reads its refusals."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from x402.schemas import PaymentPayload, PaymentRequirements

from x402_meter.errors import FacilitatorUnavailableError
from x402_meter.facilitator import FacilitatorClient
from x402_meter.facilitator_access import ApiKeys, FacilitatorAccessError, PayeeAllowlist

KEY = "a-long-enough-api-key-0123"
REQUIREMENTS = PaymentRequirements(
    scheme="upto",
    network="eip155:31337",
    asset="0x" + "11" * 20,
    amount="1",
    pay_to="0x" + "22" * 20,
    max_timeout_seconds=60,
)
PAYLOAD = PaymentPayload(accepted=REQUIREMENTS, payload={})


def test_a_key_is_accepted_as_bearer_of_any_case_or_as_x_api_key() -> None:
    keys = ApiKeys([KEY])
    for headers in ({"authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"}):
        presented = keys.presented(headers)
        assert presented is not None
        assert keys.accepts(presented)
    assert keys.accepts(keys.presented({"x-api-key": KEY}) or "")
    assert keys.presented({"authorization": f"Basic {KEY}"}) is None
    assert not keys.accepts(KEY + "x")
    assert not keys.accepts("")


def test_keys_never_show_in_repr() -> None:
    assert KEY not in repr(ApiKeys([KEY]))


@pytest.mark.parametrize("bad", ["short", "has space in the middle", "has,a,comma-0123456", ""])
def test_unusable_keys_are_refused(bad: str) -> None:
    with pytest.raises(FacilitatorAccessError):
        ApiKeys([bad])


def test_no_keys_at_all_is_refused() -> None:
    with pytest.raises(FacilitatorAccessError):
        ApiKeys([])


def test_a_keys_file_skips_blank_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# seller A\n{KEY}  # rotated 2025-01\n\n   \nsecond-key-0123456789\n")
    assert ApiKeys.read_file(path) == [KEY, "second-key-0123456789"]
    assert ApiKeys.parse_list(f" {KEY} ,, second-key-0123456789 ") == ApiKeys.read_file(path)


def test_payees_are_compared_without_regard_to_case() -> None:
    payees = PayeeAllowlist(["0x" + "aB" * 20])
    assert "0x" + "Ab" * 20 in payees
    assert "0x" + "cd" * 20 not in payees
    with pytest.raises(FacilitatorAccessError):
        PayeeAllowlist(["not-an-address"])


def client_answering(status: int, body: bytes, seen: list[httpx.Request]) -> FacilitatorClient:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=body, headers={"content-type": "application/json"})

    return FacilitatorClient("http://f", api_key=KEY, transport=httpx.MockTransport(answer))


@pytest.mark.anyio
async def test_a_structured_400_is_a_refusal_and_the_key_is_sent_as_bearer() -> None:
    seen: list[httpx.Request] = []
    body = b'{"isValid": false, "invalidReason": "invalid_payload", "invalidMessage": "x"}'
    result = await client_answering(400, body, seen).verify(PAYLOAD, REQUIREMENTS)
    assert (result.is_valid, result.invalid_reason) == (False, "invalid_payload")
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, b'{"isValid": false, "invalidReason": "unauthorized", "invalidMessage": "x"}'),
        (403, b'{"isValid": false, "invalidReason": "pay_to_not_served", "invalidMessage": "x"}'),
        (400, b'{"error": "invalid_request"}'),
        (400, b'{"isValid": true}'),
        (500, b"Internal Server Error"),
    ],
)
async def test_anything_else_that_is_not_200_is_an_outage(status: int, body: bytes) -> None:
    """A wrong key or a payee the facilitator does not serve is the seller's configuration:
    fail closed (503) and let the settlement worker retry once it is fixed."""
    with pytest.raises(FacilitatorUnavailableError):
        await client_answering(status, body, []).verify(PAYLOAD, REQUIREMENTS)
