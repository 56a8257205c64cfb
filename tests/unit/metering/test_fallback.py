"""Where a provider reported no count, the meter estimates it with the offline tokenizer.

The output from the text of the events that were forwarded, counted once as a whole; the
input from the prompt in the request body. Each side says where its count came from.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.metering.support import (
    FIXTURES,
    REQUESTS,
    STREAMS_WITH_A_CUT,
    Fixture,
    meter_fixture,
    metered,
    split,
)
from x402_meter.metering import ResponseInfo, Usage, auto_meter, count_tokens, estimate_tokens
from x402_meter.metering.prompt import prompt_text


def cut_short(fixture: Fixture) -> bytes:
    """The stream up to (not including) its usage report."""
    assert fixture.cut_before is not None
    return fixture.body[: fixture.body.index(fixture.cut_before)]


@pytest.mark.parametrize("fixture", STREAMS_WITH_A_CUT, ids=str)
def test_a_stream_cut_before_its_usage_estimates_the_forwarded_text(fixture: Fixture) -> None:
    assert fixture.output_text is not None
    usage = meter_fixture(fixture, cut_short(fixture))
    assert usage.output_source == "estimated"
    assert usage.output_tokens == count_tokens(fixture.output_text)
    assert usage.model == fixture.expected.model


@pytest.mark.parametrize("fixture", STREAMS_WITH_A_CUT, ids=str)
def test_the_estimate_of_a_cut_stream_is_the_same_for_any_chunking(fixture: Fixture) -> None:
    body = cut_short(fixture)
    whole = meter_fixture(fixture, body)
    assert meter_fixture(fixture, *split(body, range(0, len(body), 5))) == whole


@pytest.mark.parametrize(
    "fixture",
    [f for f in STREAMS_WITH_A_CUT if not f.file.startswith("anthropic/")],
    ids=str,
)
def test_a_stream_cut_before_its_usage_estimates_the_input_from_the_request(
    fixture: Fixture,
) -> None:
    usage = meter_fixture(fixture, cut_short(fixture))
    assert usage.input_source == "estimated"
    assert usage.input_tokens == count_tokens(prompt_text(fixture.request))
    assert usage.cached_input_tokens == 0


@pytest.mark.parametrize("file", ["anthropic/stream.sse", "anthropic/thinking_tool_stream.sse"])
def test_an_anthropic_stream_cut_before_message_delta_keeps_its_reported_input(
    file: str,
) -> None:
    fixture = next(f for f in STREAMS_WITH_A_CUT if f.file == file)
    usage = meter_fixture(fixture, cut_short(fixture))
    assert (usage.input_source, usage.output_source, usage.source) == (
        "reported",
        "estimated",
        "estimated",
    )
    assert usage.input_tokens == fixture.expected.input_tokens
    assert usage.cached_input_tokens == fixture.expected.cached_input_tokens


def test_the_placeholder_output_of_message_start_is_not_taken() -> None:
    fixture = next(f for f in STREAMS_WITH_A_CUT if f.file == "anthropic/stream.sse")
    message_start = fixture.body[: fixture.body.index(b"event: content_block_start")]
    usage = meter_fixture(fixture, message_start)
    assert (usage.output_tokens, usage.output_source) == (0, "estimated")


def test_a_stream_cut_mid_event_counts_only_the_complete_events() -> None:
    fixture = next(f for f in STREAMS_WITH_A_CUT if f.file == "openai_chat/stream.sse")
    first_text = fixture.body.index(b'"content":"HTTP"')
    body = fixture.body[: first_text + 20]  # the " HTTP" chunk never completes
    assert meter_fixture(fixture, body).output_tokens == 0


def test_running_totals_from_the_last_complete_chunk_stay_reported_when_cut() -> None:
    body = (FIXTURES / "vllm/chat_continuous_usage.sse").read_bytes()
    cut = body.index(b'"content":" fox"')  # chunks up to " brown" (3 tokens) went out
    usage = metered(auto_meter(ResponseInfo(200, "text/event-stream")), body[:cut])
    assert (usage.output_tokens, usage.output_source) == (3, "reported")
    assert (usage.input_tokens, usage.input_source) == (31, "reported")


@pytest.mark.parametrize(("file", "pieces"), REQUESTS)
def test_the_prompt_is_read_from_each_providers_request_shape(file: str, pieces: list[str]) -> None:
    assert prompt_text((FIXTURES / file).read_bytes()) == "\n".join(pieces)


def test_a_request_that_is_not_json_is_counted_as_text() -> None:
    truncated = (FIXTURES / "anthropic/request.json").read_bytes()[:100]
    assert prompt_text(truncated) == truncated.decode()


@pytest.mark.parametrize("body", [b"", b"  ", b"[1, 2]", b'"text"', b"{}", b'{"messages": 7}'])
def test_a_request_without_a_prompt_has_none(body: bytes) -> None:
    assert prompt_text(body) == ""


def test_without_a_request_body_the_input_is_an_estimated_zero() -> None:
    body = b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"Hi"}}]}\n\n'
    usage = metered(auto_meter(ResponseInfo(200, "text/event-stream")), body)
    assert usage == Usage(0, count_tokens("Hi"), 0, "estimated", "estimated")


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    pieces=st.lists(st.text(st.characters(codec="utf-8"), max_size=12), max_size=12),
)
def test_a_stream_without_usage_counts_its_text_once_as_a_whole(
    data: st.DataObject, pieces: list[str]
) -> None:
    events = [
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": p}}]}
        for p in pieces
    ]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=20))
    usage = metered(auto_meter(ResponseInfo(200, "text/event-stream")), *split(body, cuts))
    assert usage.output_tokens == count_tokens("".join(pieces))
    assert usage.output_source == "estimated"


def test_counting_pieces_separately_would_count_more() -> None:
    # Why the fallback counts once at the end: per-chunk counts add up to too many tokens.
    text = "Streaming splits words at arbitrary places, like this sentence here."
    pieces = [text[index : index + 8] for index in range(0, len(text), 8)]
    assert sum(count_tokens(piece) for piece in pieces) > count_tokens(text)


def test_a_plain_text_body_is_counted_as_generated_text() -> None:
    text = "Plain text, streamed: é, 日本語, emoji 🙂.\n"
    meter = auto_meter(ResponseInfo(200, "text/plain", request_body=b'{"prompt": "Say hi"}'))
    encoded = text.encode()
    usage = metered(meter, *split(encoded, range(1, len(encoded), 3)))
    assert usage == Usage(count_tokens("Say hi"), count_tokens(text), 0, "estimated", "estimated")


def test_an_unreadable_body_is_estimated_from_its_size() -> None:
    meter = auto_meter(ResponseInfo(200, "application/octet-stream"))
    assert metered(meter, b"x" * 9, b"y" * 3).output_tokens == 3


def test_a_body_in_an_unsupported_encoding_is_estimated_from_its_size() -> None:
    meter = auto_meter(ResponseInfo(200, "application/json", content_encoding="br"))
    usage = metered(meter, b"\x1b" * 40)
    assert (usage.output_tokens, usage.output_source) == (10, "estimated")


def test_json_of_no_known_provider_is_estimated_from_its_text() -> None:
    body = b'{"answer": "forty-two"}'
    usage = metered(auto_meter(ResponseInfo(200, "application/json")), body)
    assert usage == Usage(0, estimate_tokens(body.decode()), 0, "estimated", "estimated")
