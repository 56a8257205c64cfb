"""The re-check policy in process: what ends an answer early, what is charged, who is refused.

The attacks themselves run against real servers and the chain in
tests/security/test_voiding.py; these pin the decisions (an outage fails closed without
blaming the payer, a void is remembered) and the options' checks.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from x402.schemas import VerifyResponse

from tests.ledger_rows import payment_row
from tests.unit.test_middleware_hot_path import ASSET, NETWORK, paid_request
from x402_meter import ConfigurationError, MemoryStore, X402Meter
from x402_meter.config import MeterConfig
from x402_meter.devstack.accounts import PAYERS, SELLER
from x402_meter.devstack.instant_facilitator import InstantFacilitator
from x402_meter.errors import FacilitatorUnavailableError
from x402_meter.settlement import settle_deadline
from x402_meter.store import LedgerState

pytestmark = pytest.mark.anyio

CHUNK = b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"hi"}}]}\n\n'


class Rechecks(InstantFacilitator):
    """Verifies the first time (admission); answers re-checks with ``later``."""

    def __init__(self, later: VerifyResponse | None) -> None:
        super().__init__()
        self.later = later
        self.verifies = 0

    async def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        self.verifies += 1
        if self.verifies == 1:
            return await super().verify(payload, requirements)
        if self.later is None:
            raise FacilitatorUnavailableError("/verify: ConnectError")
        return self.later


async def waiting_app(scope: Any, receive: Any, send: Any) -> None:
    """Sends one chunk, then waits for ever, as an app stuck on its upstream."""
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
    await anyio.Event().wait()


def meter_with(facilitator: InstantFacilitator) -> X402Meter:
    return X402Meter(
        waiting_app,
        pay_to=SELLER.address,
        network=NETWORK,
        asset=ASSET,
        price_per_token="0.000002",
        routes=["POST /v1/chat/completions"],
        store=MemoryStore(),
        facilitator=facilitator,
        recheck_every=0.05,
    )


async def test_an_outage_ends_the_answer_at_the_second_missed_recheck_and_blames_no_one() -> None:
    facilitator = Rechecks(None)
    meter = meter_with(facilitator)
    sent, row = await paid_request(meter)
    assert facilitator.verifies == 3  # admission, one miss tolerated, the second ends it
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert b"".join(m.get("body", b"") for m in sent[1:]) == CHUNK
    assert row.state is LedgerState.SETTLED
    assert row.output_tokens > 0
    assert row.amount == (row.input_tokens + row.output_tokens) * 2  # what was served
    assert await meter.runtime.store.voided_payers(0.0) == []


async def test_a_recheck_that_finds_a_void_ends_the_answer_and_refuses_the_payer() -> None:
    void = VerifyResponse(is_valid=False, invalid_reason="permit2_insufficient_balance")
    meter = meter_with(Rechecks(void))
    sent, row = await paid_request(meter)
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert row.state is LedgerState.SETTLED  # the stand-in settles; a real facilitator refuses
    [entry] = await meter.runtime.store.voided_payers(0.0)
    assert (entry.payer, entry.reason) == (
        PAYERS[0].address.lower(),
        "permit2_insufficient_balance",
    )
    assert entry.receipt_id == row.receipt_id

    refused, _ = await paid_request(meter)  # the same payer, a new authorization
    assert refused[0]["status"] == 402
    assert json.loads(refused[1]["body"])["reason"] == "payer_voided"


async def test_a_recheck_that_fails_for_another_reason_ends_the_answer_only() -> None:
    other = VerifyResponse(is_valid=False, invalid_reason="upto_facilitator_mismatch")
    meter = meter_with(Rechecks(other))
    sent, _ = await paid_request(meter)
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert await meter.runtime.store.voided_payers(0.0) == []


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"recheck_every": -1}, "recheck_every"),
        ({"expiry_margin": 6}, "expiry_margin"),
        ({"expiry_margin": 300}, "expiry_margin"),
        ({"max_timeout_seconds": 30, "expiry_margin": 30}, "expiry_margin"),
        ({"voided_payer_seconds": -1}, "voided_payer_seconds"),
    ],
)
def test_the_options_are_checked(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        MeterConfig.create(pay_to=SELLER.address, price_per_token="0.000002", **options)


def test_the_settle_deadline_is_the_permits_less_the_facilitators_buffer() -> None:
    upto = {"payload": {"permit2Authorization": {"deadline": "1700000300"}}}
    exact = {"payload": {"authorization": {"validBefore": "1700000300"}}}
    assert settle_deadline(payment_row(payload_json=json.dumps(upto))) == 1_700_000_294.0
    assert settle_deadline(payment_row(payload_json=json.dumps(exact))) == 1_700_000_294.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=25), inner),
    max_leaves=8,
)


@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"payload": st.fixed_dictionaries({"permit2Authorization": json_values})}
        ),
        st.fixed_dictionaries({"payload": st.fixed_dictionaries({"authorization": json_values})}),
    )
)
def test_the_settle_deadline_of_any_payload_is_a_time_or_none(payload: Any) -> None:
    deadline = settle_deadline(payment_row(payload_json=json.dumps(payload)))
    assert deadline is None or isinstance(deadline, float)
