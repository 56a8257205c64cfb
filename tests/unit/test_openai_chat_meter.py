"""OpenAI-compatible chat completions: usage read from JSON bodies and SSE streams."""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x402_meter.metering import Meter, ResponseInfo, Usage, openai_chat_meter
from x402_meter.metering.openai_chat import estimate_tokens

PIECES = ("The ", "answer ", "is ", "forty", "-two", ".", " Ça va ✓")
TEXT = "".join(PIECES)
MODEL = "gpt-test"


def usage(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        body["prompt_tokens_details"] = {"cached_tokens": cached, "audio_tokens": 0}
    return body


def chunk(delta: dict[str, Any], **extra: Any) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        "usage": None,
        **extra,
    }
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


def stream(
    pieces: Iterable[str] = PIECES, final_usage: dict[str, Any] | None = None, done: bool = True
) -> bytes:
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in pieces]
    if final_usage is not None:
        events.append(chunk({}, choices=[], usage=final_usage))
    if done:
        events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def completion(content: str = TEXT, body_usage: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
    }
    if body_usage is not None:
        body["usage"] = body_usage
    return json.dumps(body).encode()


def stream_meter() -> Meter:
    return openai_chat_meter(ResponseInfo(200, "text/event-stream"))


def json_meter() -> Meter:
    return openai_chat_meter(ResponseInfo(200, "application/json"))


def estimated(output: int, model: str | None = None) -> Usage:
    return Usage(0, output, 0, "estimated", "estimated", model)


def metered(meter: Meter, *chunks: bytes) -> Usage:
    for part in chunks:
        meter.feed(part)
    return meter.finish()


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[start:end] for start, end in pairwise(bounds)]


def test_a_stream_reports_the_usage_of_its_final_chunk() -> None:
    body = stream(final_usage=usage(57, 116, cached=20))
    assert metered(stream_meter(), body) == Usage(57, 116, 20, model=MODEL)


def test_a_stream_usage_without_details_has_no_cached_tokens() -> None:
    assert metered(stream_meter(), stream(final_usage=usage(5, 7))) == Usage(5, 7, 0, model=MODEL)


@settings(max_examples=200)
@given(
    data=st.data(),
    prompt=st.integers(0, 10**6),
    completion_tokens=st.integers(0, 10**6),
    cached=st.integers(0, 10**6),
)
def test_a_stream_reports_the_same_usage_for_any_chunking(
    data: st.DataObject, prompt: int, completion_tokens: int, cached: int
) -> None:
    body = stream(final_usage=usage(prompt, completion_tokens, cached))
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=40))
    expected = Usage(prompt, completion_tokens, min(cached, prompt), model=MODEL)
    assert metered(stream_meter(), *split(body, cuts)) == expected


def test_a_stream_without_usage_is_estimated_from_the_forwarded_text() -> None:
    assert metered(stream_meter(), stream()) == estimated(estimate_tokens(TEXT), MODEL)


@settings(max_examples=200)
@given(
    data=st.data(),
    pieces=st.lists(st.text(st.characters(codec="utf-8"), max_size=20), max_size=8),
)
def test_a_stream_without_usage_is_estimated_for_any_chunking(
    data: st.DataObject, pieces: list[str]
) -> None:
    body = stream(pieces)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=40))
    expected = estimated(estimate_tokens("".join(pieces)), MODEL)
    assert metered(stream_meter(), *split(body, cuts)) == expected


def test_a_stream_cut_short_is_estimated_from_the_events_that_arrived() -> None:
    body = stream(final_usage=usage(57, 116))
    cut = body.index(b'"usage": {')  # the usage chunk never completes
    assert metered(stream_meter(), body[:cut]) == estimated(estimate_tokens(TEXT), MODEL)


def test_a_stream_with_odd_events_only_counts_chat_chunks() -> None:
    body = (
        b": keep-alive\n\n"
        b"data: not json\n\n"
        b"data: [1, 2]\n\n"
        b'data: {"choices": "x"}\n\n'
        b'data: {"choices": [1, {"delta": "x"}, {"delta": {"content": 5}}]}\n\n'
        b'data: {"usage": {"prompt_tokens": "3", "completion_tokens": 4}}\n\n'
        + chunk({"content": "abcdefgh"})
        + b"data: " + b"[" * 5000 + b"\n\n"
        + b"data: [DONE]\n\n"
    )  # fmt: skip
    assert metered(stream_meter(), body) == estimated(estimate_tokens("abcdefgh"), MODEL)


def test_the_json_meter_reads_usage() -> None:
    body = completion(body_usage=usage(57, 116, cached=20))
    assert metered(json_meter(), body) == Usage(57, 116, 20)


def test_the_json_meter_reads_usage_for_any_chunking() -> None:
    body = completion(body_usage=usage(57, 116, cached=20))
    for cut in range(len(body)):
        assert metered(json_meter(), body[:cut], body[cut:]) == Usage(57, 116, 20)


def test_the_json_meter_ignores_ill_typed_cached_tokens() -> None:
    body = completion(body_usage={**usage(5, 7), "prompt_tokens_details": {"cached_tokens": "3"}})
    assert metered(json_meter(), body) == Usage(5, 7, 0)


def test_the_json_meter_without_usage_estimates_from_the_message() -> None:
    assert metered(json_meter(), completion()) == estimated(estimate_tokens(TEXT))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"null",
        b"[]",
        b'"text"',
        b"\xff\xfe\x00garbage",
        b"[" * 100_000,
        b'{"usage": {"prompt_tokens": 1}',
        b'{"usage": "lots", "choices": 7}',
    ],
)
def test_a_json_body_without_readable_usage_is_estimated_never_raised(body: bytes) -> None:
    assert metered(json_meter(), body).source == "estimated"


def test_a_truncated_json_body_is_estimated() -> None:
    body = completion(body_usage=usage(57, 116))
    assert metered(json_meter(), body[:-10]) == estimated(0)


@settings(max_examples=300)
@given(body=st.binary(max_size=300))
def test_the_meters_never_raise_on_arbitrary_bytes(body: bytes) -> None:
    for meter in (json_meter(), stream_meter()):
        assert metered(meter, body, body).source in ("reported", "estimated")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/event-stream", stream(final_usage=usage(5, 7))),
        ("application/json", completion(body_usage=usage(5, 7))),
        ("application/problem+json", completion(body_usage=usage(5, 7))),
    ],
)
def test_the_factory_reads_sse_and_json_bodies(content_type: str, body: bytes) -> None:
    usage = metered(openai_chat_meter(ResponseInfo(200, content_type)), body)
    assert (usage.input_tokens, usage.output_tokens, usage.source) == (5, 7, "reported")


def test_other_content_is_estimated_from_its_size() -> None:
    meter = openai_chat_meter(ResponseInfo(200, "application/octet-stream"))
    assert metered(meter, b"x" * 9, b"y" * 3) == estimated(3)


def test_an_embeddings_answer_is_its_input_tokens_and_no_output() -> None:
    """Its numbers are not text: were they counted as output, a long vector would cost
    thousands of tokens."""
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1] * 1536}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    assert metered(json_meter(), json.dumps(body).encode()) == Usage(
        8, 0, 0, model="text-embedding-3-small"
    )


def test_auto_meter_recognises_an_embeddings_answer() -> None:
    from x402_meter.metering import auto_meter

    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    meter = auto_meter(ResponseInfo(200, "application/json"))
    assert metered(meter, json.dumps(body).encode()) == Usage(3, 0, 0)
