"""Admission's pieces, one at a time: reading a body within its bounds, shaping as a lenient
upstream reads the request (pydantic's lax mode stands in for such an upstream)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from starlette.types import Message

from x402_meter import TokenPrice
from x402_meter.errors import RequestRefusedError
from x402_meter.request_body import BodyBudget, read_request_body
from x402_meter.shaping import reads_as_true, shape_request

pytestmark = pytest.mark.anyio

LENIENT_BOOL = TypeAdapter(bool)
LENIENT_INT = TypeAdapter(int)


def receiving(*chunks: bytes) -> Any:
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]

    async def receive() -> Message:
        return messages.pop(0)

    return receive


def scope(length: int | None = None) -> dict[str, Any]:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    return {"type": "http", "headers": headers}


async def test_a_body_is_read_whole_and_its_bytes_given_back() -> None:
    budget = BodyBudget(1000)
    read = await read_request_body(
        scope(), receiving(b"ab", b"cd"), limit=10, time_limit=5, budget=budget
    )
    assert (read.body, read.disconnect, budget.held) == (b"abcd", None, 0)


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    async def receive() -> Message:
        raise AssertionError("nothing may be read")

    with pytest.raises(RequestRefusedError) as refused:
        await read_request_body(scope(11), receive, limit=10, time_limit=5, budget=BodyBudget(99))
    assert (refused.value.status_code, refused.value.reason) == (413, "request_too_large")


async def test_an_undeclared_body_over_the_limit_is_refused_as_it_arrives() -> None:
    budget = BodyBudget(1000)
    with pytest.raises(RequestRefusedError) as refused:
        await read_request_body(
            scope(), receiving(b"x" * 6, b"x" * 6), limit=10, time_limit=5, budget=budget
        )
    assert (refused.value.status_code, budget.held) == (413, 0)


async def test_bodies_past_the_shared_budget_are_refused_for_a_moment() -> None:
    budget = BodyBudget(100)
    assert budget.take(60)  # another body, still arriving
    with pytest.raises(RequestRefusedError) as refused:
        await read_request_body(
            scope(), receiving(b"x" * 30, b"x" * 30), limit=100, time_limit=5, budget=budget
        )
    assert (refused.value.status_code, refused.value.reason) == (503, "server_busy")
    assert refused.value.retry_after == 1
    assert budget.held == 60  # this request's 30 bytes were given back


async def test_a_client_that_leaves_ends_the_body() -> None:
    async def receive() -> Message:
        return {"type": "http.disconnect"}

    budget = BodyBudget(100)
    read = await read_request_body(scope(), receive, limit=10, time_limit=5, budget=budget)
    assert (read.body, read.disconnect, budget.held) == (b"", {"type": "http.disconnect"}, 0)


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["5000", " 7 ", "1", "true", "TRUE", "on", "yes", "0", "off", "1e3"])
)


@given(JSON_SCALARS)
def test_whatever_a_lenient_upstream_reads_as_true_streams_here_too(value: Any) -> None:
    try:
        lenient = LENIENT_BOOL.validate_python(value)
    except ValidationError:
        return  # the upstream refuses the request: nothing is served
    assert reads_as_true(value) == lenient


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/chat/completions", ("max_tokens",)),
        ("/v1/chat/completions", ("max_completion_tokens",)),
        ("/v1/completions", ("max_tokens",)),
        ("/v1/responses", ("max_output_tokens",)),
        ("/v1/messages", ("max_tokens",)),
        ("/v1beta/models/g:streamGenerateContent", ("generationConfig", "maxOutputTokens")),
        ("/api/chat", ("options", "num_predict")),
        ("/completion", ("n_predict",)),
    ],
)
@settings(deadline=None)  # the first example loads the tokenizer
@given(value=JSON_SCALARS)
def test_no_output_limit_is_left_above_what_the_payment_covers(
    path: str, field: tuple[str, ...], value: Any
) -> None:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    holder = body
    for key in field[:-1]:
        holder = holder.setdefault(key, {})
    holder[field[-1]] = value
    price = TokenPrice(input="0", output="0.000002")
    shaped = shape_request(path, json.dumps(body).encode(), price, 6, 200)  # 100 tokens
    assert shaped is not None
    out: Any = json.loads(shaped.body)
    for key in field:
        out = out[key]
    assert 1 <= LENIENT_INT.validate_python(out) <= 100
