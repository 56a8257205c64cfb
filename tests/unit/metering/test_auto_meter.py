"""auto_meter picks the reader by content type and the provider from the first events."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.metering.support import RESPONSES, Fixture, metered
from x402_meter.metering import ResponseInfo, Usage, auto_meter, count_tokens
from x402_meter.metering.anthropic import AnthropicUsage
from x402_meter.metering.auto import recognise
from x402_meter.metering.extractor import UsageExtractor
from x402_meter.metering.gemini import GeminiUsage
from x402_meter.metering.meter import DETECT_LIMIT, body_format
from x402_meter.metering.ollama import OllamaUsage
from x402_meter.metering.openai_chat import OpenAIChatUsage
from x402_meter.metering.openai_responses import OpenAIResponsesUsage


@pytest.mark.parametrize(
    ("content_type", "form"),
    [
        ("text/event-stream", "sse"),
        ("application/x-ndjson", "ndjson"),
        ("application/jsonl", "ndjson"),
        ("application/json", "json"),
        ("application/problem+json", "json"),
        ("text/plain", "text"),
        ("image/png", "opaque"),
        ("", "opaque"),
    ],
)
def test_the_body_format_follows_the_content_type(content_type: str, form: str) -> None:
    assert body_format(content_type) == form


@pytest.mark.parametrize(
    ("event", "extractor"),
    [
        ({"object": "chat.completion.chunk", "choices": []}, OpenAIChatUsage),
        ({"object": "chat.completion", "choices": []}, OpenAIChatUsage),
        ({"object": "text_completion", "choices": []}, OpenAIChatUsage),
        ({"choices": [{"delta": {}}]}, OpenAIChatUsage),
        ({"type": "response.created", "response": {}}, OpenAIResponsesUsage),
        ({"object": "response", "output": []}, OpenAIResponsesUsage),
        ({"type": "message_start", "message": {}}, AnthropicUsage),
        ({"type": "message", "role": "assistant", "content": []}, AnthropicUsage),
        ({"candidates": []}, GeminiUsage),
        ({"usageMetadata": {}}, GeminiUsage),
        ({"model": "llama3.2", "created_at": "2025-01-01T00:00:00Z", "done": False}, OllamaUsage),
        ({"type": "ping"}, None),
        ({"error": {"message": "overloaded"}}, None),
        ({}, None),
    ],
)
def test_the_provider_is_recognised_from_one_event(
    event: dict[str, Any], extractor: type[UsageExtractor] | None
) -> None:
    assert recognise(event) is extractor


def test_events_before_the_recognisable_one_are_not_lost() -> None:
    body = (
        b": keep-alive\n\n"
        b'data: {"type": "ping"}\n\n'
        b'data: {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "Hi"}}],'
        b' "usage": {"prompt_tokens": 3, "completion_tokens": 1}}\n\n'
    )
    usage = metered(auto_meter(ResponseInfo(200, "text/event-stream")), body)
    assert usage == Usage(3, 1)


def test_after_enough_unrecognised_events_the_body_is_counted_as_unknown_json() -> None:
    event = b'data: {"token": "word"}\n\n'
    body = event * (DETECT_LIMIT + 4)
    usage = metered(auto_meter(ResponseInfo(200, "text/event-stream")), body)
    expected = count_tokens("\n".join(['{"token": "word"}'] * (DETECT_LIMIT + 4)))
    assert (usage.output_tokens, usage.output_source) == (expected, "estimated")


def test_a_model_is_named_only_when_the_response_names_it() -> None:
    body = b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n'
    assert metered(auto_meter(ResponseInfo(200, "text/event-stream")), body).model is None


def test_an_unknown_tokenizer_encoding_is_refused_when_the_meter_is_made() -> None:
    with pytest.raises(ValueError, match="p50k_base"):
        auto_meter(ResponseInfo(200, "text/event-stream"), encoding="p50k_base")


def test_the_fallback_counts_with_the_encoding_asked_for() -> None:
    text = "Ça va? 日本語のテキスト"
    body = "data: " + json.dumps({"choices": [{"delta": {"content": text}}]}) + "\n\n"
    for encoding in ("o200k_base", "cl100k_base"):
        meter = auto_meter(ResponseInfo(200, "text/event-stream"), encoding=encoding)
        usage = metered(meter, body.encode())
        assert usage.output_tokens == count_tokens(text, encoding)


def test_finish_gives_the_same_usage_when_called_again() -> None:
    fixture = RESPONSES[0]
    meter = auto_meter(fixture.info())
    meter.feed(fixture.body)
    assert meter.finish() == meter.finish() == fixture.expected


def test_counts_of_the_wrong_type_are_not_taken() -> None:
    body = (
        b'{"object": "chat.completion", "choices": [{"message": {"content": "Hi"}}],'
        b' "usage": {"prompt_tokens": "3", "completion_tokens": true}}'
    )
    usage = metered(auto_meter(ResponseInfo(200, "application/json")), body)
    assert usage.source == "estimated"
    assert usage.output_tokens == count_tokens("Hi")


def test_cached_tokens_never_exceed_the_input() -> None:
    body = json.dumps(
        {
            "object": "chat.completion",
            "choices": [],
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 9},
            },
        }
    ).encode()
    usage = metered(auto_meter(ResponseInfo(200, "application/json")), body)
    assert usage.cached_input_tokens == 5


# --- garbage never raises -------------------------------------------------------------------

CONTENT_TYPES = [
    "text/event-stream",
    "application/x-ndjson",
    "application/json",
    "text/plain",
    "application/octet-stream",
]
ENCODINGS = [None, "gzip", "deflate", "br"]


@settings(max_examples=300)
@given(
    content_type=st.sampled_from(CONTENT_TYPES),
    content_encoding=st.sampled_from(ENCODINGS),
    chunks=st.lists(st.binary(max_size=64), max_size=8),
    request_body=st.binary(max_size=64),
)
def test_arbitrary_bytes_never_raise(
    content_type: str, content_encoding: str | None, chunks: list[bytes], request_body: bytes
) -> None:
    meter = auto_meter(ResponseInfo(200, content_type, content_encoding, request_body))
    usage = metered(meter, *chunks)
    assert usage.input_tokens >= 0
    assert usage.output_tokens >= 0


JSONISH = st.lists(
    st.sampled_from(
        [
            "data: ",
            "\n",
            "\n\n",
            "{",
            "}",
            "[",
            "]",
            '"',
            "\\",
            ",",
            ":",
            '"usage"',
            '"prompt_tokens"',
            '"usageMetadata"',
            '"eval_count"',
            '"input_tokens"',
            '"output_tokens"',
            '"type": "message_start"',
            '"object": "chat.completion.chunk"',
            '"candidates"',
            '"done": true',
            "1",
            "-1",
            "null",
            "1e999",
            "é",
        ]
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(
    content_type=st.sampled_from(CONTENT_TYPES[:3]),
    pieces=JSONISH,
    gzipped=st.booleans(),
)
def test_json_like_garbage_never_raises(
    content_type: str, pieces: list[str], gzipped: bool
) -> None:
    body = "".join(pieces).encode()
    encoding = "gzip" if gzipped else None
    if gzipped:
        body = gzip.compress(body)
    usage = metered(auto_meter(ResponseInfo(200, content_type, encoding)), body, body)
    assert usage.input_tokens >= 0
    assert usage.output_tokens >= 0


@pytest.mark.parametrize("fixture", RESPONSES, ids=str)
def test_a_response_fed_after_garbage_never_raises(fixture: Fixture) -> None:
    meter = auto_meter(fixture.info())
    usage = metered(meter, b"\xff\xfe[{" * 100, fixture.body, b"[" * 100_000)
    assert usage.source in ("reported", "estimated")
