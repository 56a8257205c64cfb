"""The meters' fast paths give exactly what the plain paths give (``accelerate=False``, the
reference; docs/design/metering.md says which invariants they keep).

- SSEParser: the events the plain (line-by-line) parser gives; feed_data: their data, a run
  of one-line events split in bulk (named ones, Anthropic's, found by two regular
  expressions), also after a chunk that ended inside an event;
- decode: json.loads' result (or None), without its Python layers;
- UsageExtractor.events: what the plain extractor gives (event() for each event), the runs
  without a marker kept in bulk;
- OpenAIChatUsage.text: texts() joined; its text_of: what the plain extractor gives (every
  chunk decoded), decoding skipped for a chunk that differs from the last decoded one only in
  a plain content string.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_sse_parser import BLOCKS, LINE_ENDS, serialize, split
from x402_meter.metering import extractor as extractor_module
from x402_meter.metering.anthropic import AnthropicUsage
from x402_meter.metering.extractor import UnknownFormat, UsageExtractor, decode
from x402_meter.metering.openai_chat import OpenAIChatUsage
from x402_meter.metering.openai_responses import OpenAIResponsesUsage
from x402_meter.metering.sse import MAX_EVENT_SIZE, SSEEvent, SSEParser

# --- SSE --------------------------------------------------------------------------------------


def parsed(parser: SSEParser, chunks: tuple[bytes, ...]) -> list[SSEEvent]:
    return [event for chunk in chunks for event in parser.feed(chunk)] + parser.close()


def data_of(*chunks: bytes, bound: int | None = None) -> tuple[list[str], list[str]]:
    """(data via the plain parser's feed, data via the fast parser's feed_data), chunk by
    chunk then at close. The fast parser's feed gives the plain parser's events, ids and
    names included, and both drop as much."""
    size = MAX_EVENT_SIZE if bound is None else bound
    plain = SSEParser(size, accelerate=False)
    whole, data = SSEParser(size), SSEParser(size)
    events = parsed(plain, chunks)
    assert parsed(whole, chunks) == events
    fast = [value for chunk in chunks for value in data.feed_data(chunk)] + data.close_data()
    assert whole.dropped == plain.dropped == data.dropped
    return [event.data for event in events], fast


@settings(max_examples=300)
@given(
    data=st.data(),
    blocks=st.lists(BLOCKS, max_size=8),
    end=st.sampled_from(LINE_ENDS),
    bom=st.booleans(),
)
def test_feed_data_is_the_data_of_feed_for_any_chunking(
    data: st.DataObject, blocks: list[Any], end: str, bom: bool
) -> None:
    stream = serialize(blocks, end, bom)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    events, fast = data_of(*split(stream, cuts))
    assert fast == events


@settings(max_examples=300)
@given(
    data=st.data(),
    pieces=st.lists(
        st.sampled_from(["data: ", "data:", "data", "event: e\n", ": c\n", "id: 1\n", "x", "é"])
        | st.sampled_from(["\n", "\n\n", "\r", "data: a\n\n", "data: b\n\ndata: c\n\n"]),
        max_size=30,
    ),
    bound=st.none() | st.integers(1, 40),
)
def test_feed_data_matches_feed_on_field_like_text(
    data: st.DataObject, pieces: list[str], bound: int | None
) -> None:
    stream = "".join(pieces).encode()
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    events, fast = data_of(*split(stream, cuts), bound=bound)
    assert fast == events
    # and the event objects are those of the line-by-line parse of the whole stream
    assert data_of(stream, bound=bound)[0] == events


FIELD_TEXT = st.lists(
    st.sampled_from(["a", " ", ":", "é", "data: ", "event: ", "\\n", "{}"]), max_size=6
).map("".join)
"""A field's value: pieces of what the lines around it are made of, no line end."""


@settings(max_examples=300)
@given(
    data=st.data(),
    events=st.lists(st.tuples(st.none() | FIELD_TEXT, FIELD_TEXT), max_size=12),
    other=st.sampled_from(["", ": ping\n\n", "event: x\n\n", "data: a\ndata: b\n\n"]),
)
def test_a_run_of_named_events_gives_their_data_for_any_chunking(
    data: st.DataObject, events: list[tuple[str | None, str]], other: str
) -> None:
    blocks = [
        ("" if name is None else f"event: {name}\n") + f"data: {value}\n\n"
        for name, value in events
    ]
    if other:  # something a run cannot hold, somewhere in it
        blocks.insert(data.draw(st.integers(0, len(blocks))), other)
    stream = "".join(blocks).encode()
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    whole, fast = data_of(*split(stream, cuts))
    assert fast == whole
    assert [value for value in fast if value != "a\nb"] == [value for _, value in events]


def test_a_run_of_one_line_events_keeps_the_last_event_id() -> None:
    parser = SSEParser()
    events = parser.feed(b"id: 7\ndata: a\n\ndata: b\n\ndata: c\n\ndata: d")
    assert [(e.data, e.id) for e in events] == [("a", "7"), ("b", "7"), ("c", "7")]
    assert [(e.data, e.id) for e in parser.close()] == []


def test_a_run_with_an_other_line_inside_is_parsed_line_by_line() -> None:
    stream = b"data: a\n\n: keep-alive\ndata: b\n\ndata:c\n\ndata: d\ndata: e\n\n"
    assert data_of(stream) == (["a", "b", "c", "d\ne"], ["a", "b", "c", "d\ne"])


# --- decode -----------------------------------------------------------------------------------


def loads_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


def same(left: Any, right: Any) -> bool:
    if isinstance(left, float) and isinstance(right, float) and math.isnan(left):
        return math.isnan(right)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(same, left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(same(left[k], right[k]) for k in left)
    return type(left) is type(right) and left == right


@settings(max_examples=500)
@given(
    value=JSON_VALUES,
    before=st.sampled_from(["", " ", "\n\t ", "\ufeff", "x"]),
    after=st.sampled_from(["", " ", "\r\n", " 1", ",", "}", "\x00"]),
    ensure_ascii=st.booleans(),
)
def test_decode_is_json_loads(value: Any, before: str, after: str, ensure_ascii: bool) -> None:
    text = before + json.dumps(value, ensure_ascii=ensure_ascii) + after
    assert same(decode(text), loads_or_none(text))


@settings(max_examples=500)
@given(
    text=st.text(
        alphabet=st.sampled_from(list('{}[]",:0123456789.eE+- \n\tnulltruefase\\u')), max_size=20
    )
)
def test_decode_is_json_loads_on_almost_json(text: str) -> None:
    assert same(decode(text), loads_or_none(text))


def test_decode_gives_none_for_nesting_too_deep() -> None:
    assert decode("[" * 100_000 + "]" * 100_000) is None


# --- extractors -------------------------------------------------------------------------------

USAGE = '{"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d}}'
CHUNK = '{"object":"chat.completion.chunk","model":"m","choices":[{"delta":{"content":%s}}]}'
ANTHROPIC = [
    '{"type":"message_start","message":{"model":"c","usage":{"input_tokens":5,"output_tokens":1}}}',
    '{"type":"content_block_delta","delta":{"type":"text_delta","text":"hi"}}',
    '{"type":"message_delta","usage":{"output_tokens":%d}}',
]
EVENT_TEXTS = st.one_of(
    st.builds(lambda text: CHUNK % json.dumps(text), st.text(max_size=6)),
    st.builds(lambda a, b: USAGE % (a, b), st.integers(0, 9), st.integers(0, 9)),
    st.sampled_from(ANTHROPIC[:2]),
    st.builds(lambda n: ANTHROPIC[2] % n, st.integers(0, 9)),
    st.sampled_from(["", "not json", '"prompt_tokens"', '{"usage": null}', "[DONE]"]),
)


def state(extractor: UsageExtractor) -> tuple[Any, ...]:
    extractor.settle()
    return (
        extractor.input_tokens,
        extractor.output_tokens,
        extractor.cached_input_tokens,
        extractor.model,
        extractor.dropped,
        extractor.take_text(),
    )


@settings(max_examples=400)
@given(
    batches=st.lists(st.lists(EVENT_TEXTS, max_size=24), max_size=5),
    kind=st.sampled_from([OpenAIChatUsage, AnthropicUsage, UnknownFormat]),
    budget=st.integers(0, 400),
)
def test_events_in_bulk_are_events_one_by_one(
    batches: list[list[str]], kind: type[UsageExtractor], budget: int
) -> None:
    # a small budget, so that it runs out
    one_by_one, bulk = plain(kind(max_kept_size=budget)), kind(max_kept_size=budget)
    for batch in batches:
        one_by_one.events(batch)
        bulk.events(batch)
    assert state(bulk) == state(one_by_one)


def plain(extractor: UsageExtractor) -> UsageExtractor:
    """``extractor`` with its fast paths off (as ``BodyMeter(accelerate=False)`` sets it)."""
    extractor.accelerate = False
    return extractor


def reference_text(extractor: OpenAIChatUsage, data: str) -> str:
    return "".join(extractor.texts(loads_or_none(data)))


CHOICES = st.recursive(
    st.none() | st.integers() | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "text",
                    "delta",
                    "message",
                    "content",
                    "reasoning",
                    "reasoning_content",
                    "refusal",
                    "tool_calls",
                    "function",
                    "name",
                    "arguments",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=500)
@given(choices=CHOICES)
def test_openai_text_is_texts_joined(choices: Any) -> None:
    extractor = OpenAIChatUsage()
    event = {"choices": choices}
    assert extractor.text(event) == "".join(extractor.texts(event))


CONTENTS = st.lists(
    st.sampled_from(list('ab é😀"\\\n\x00/,'))
    | st.sampled_from(["\\u0041", '\\"', "\\n", "\\\\", "\\ud83d\\ude00", "\\x"]),
    max_size=5,
).map("".join)
SHAPES = [
    '{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
    '"delta":{"content":"%s"},"finish_reason":null}],"usage":null}',
    '{"choices":[{"delta":{"content":"%s","reasoning":"r"}}]}',
    '{"choices":[{"delta":{"content":"%s"}}],"content":"x"}',
    '{"choices":[{"delta":{"content":"%s"}}],"choices":[]}',
    '{"choices":[{"delta":{"con\\u0074ent":"%s"}}]}',
    '{"choices":[{"message":{"content":"%s"},"text":"t"}]}',
    '{"x":{"content":"%s"},"choices":[{"delta":{"content":"y"}}]}',
    '{"choices":[{"delta":{"tool_calls":[{"function":{"name":"%s","arguments":"{}"}}]}}]}',
]


@settings(max_examples=500)
@given(
    chunks=st.lists(st.tuples(st.sampled_from(SHAPES), CONTENTS), max_size=12).flatmap(
        lambda few: st.integers(1, 5).map(lambda times: few * times)  # runs of one template
    ),
    snapshots=st.lists(st.integers(0, 60), max_size=3),
)
def test_openai_text_of_chunks_is_what_decoding_them_gives(
    chunks: list[tuple[str, str]], snapshots: list[int]
) -> None:
    extractor = OpenAIChatUsage()
    reference = plain(OpenAIChatUsage())
    events = [shape.replace("%s", content) for shape, content in chunks]
    taken = ""
    for index, data in enumerate(events):
        extractor.event(data)
        reference.event(data)
        if index in snapshots:  # taken a part at a time, as snapshots do
            taken += extractor.take_text()
    expected = "".join(reference_text(OpenAIChatUsage(), data) for data in events)
    assert reference.take_text() == expected
    assert taken + extractor.take_text() == expected
    assert extractor.model == reference.model


@pytest.mark.parametrize("extractor", [OpenAIChatUsage, AnthropicUsage], ids=str)
def test_no_marker_holds_a_line_end(extractor: type[UsageExtractor]) -> None:
    # events() finds markers in the events joined by line ends
    assert all("\n" not in marker for marker in extractor.markers)


@pytest.mark.parametrize(
    "contents",
    [
        ["plain", " run", " of", " words"],
        [r"line\nbreak", r"tab\t", r"quote \" inside", r"\u00e9t\u00e9", r"\\", "x"],
        [r"\ud83d\ude00", r"bad \x escape", "y"],
        [r"ends with \\", "z"],
        ["ends with \\", '"}', "w"],
        ['raw " quote', "v"],
        ["control \x01", "u"],
        ["", "", "t"],
    ],
    ids=str,
)
def test_openai_chunks_after_a_plain_one_are_read_as_decoding_would(
    contents: list[str],
) -> None:
    shape = SHAPES[0]
    events = [shape.replace("%s", "first")] + [shape.replace("%s", c) for c in contents] * 20
    extractor, reference = OpenAIChatUsage(), plain(OpenAIChatUsage())
    extractor.events(events)
    reference.events(events)
    assert extractor.take_text() == reference.take_text()


RESPONSES_DELTA = (
    '{"type":"response.output_text.delta","sequence_number":%s,"item_id":"msg_1",'
    '"output_index":0,"content_index":0,"delta":"%s","logprobs":[]}'
)
SEQUENCE_NUMBERS = st.integers(-5, 10**12).map(str) | st.sampled_from(
    ["007", "-0", "1.5", "1e3", "", "x", "4,", " 4"]
)
"""JSON integers, and what is not one (the event is then another shape, or not JSON)."""


@settings(max_examples=300)
@given(
    chunks=st.lists(
        st.tuples(SEQUENCE_NUMBERS, st.text(max_size=3) | st.sampled_from(['\\"', "\\n", '"'])),
        max_size=30,
    ),
    first=st.sampled_from(["4", "12", "0"]),
)
def test_responses_text_of_deltas_whatever_their_sequence_number_is_what_decoding_gives(
    chunks: list[tuple[str, str]], first: str
) -> None:
    extractor, reference = OpenAIResponsesUsage(), plain(OpenAIResponsesUsage())
    events = [RESPONSES_DELTA % (first, "first")] + [RESPONSES_DELTA % c for c in chunks]
    extractor.events(events)
    reference.events(events)
    expected = "".join("".join(extractor.texts(loads_or_none(data))) for data in events)
    assert reference.take_text() == expected
    assert extractor.take_text() == expected
    assert extractor.model == reference.model


def test_responses_deltas_past_the_first_are_not_decoded(monkeypatch: Any) -> None:
    decoded: list[str] = []
    real_decode = extractor_module.decode

    def counted(text: str) -> Any:
        decoded.append(text)
        return real_decode(text)

    monkeypatch.setattr(extractor_module, "decode", counted)
    extractor = OpenAIResponsesUsage()
    events = [RESPONSES_DELTA % (4 + index, f" w{index}") for index in range(40)]
    extractor.events(events)
    assert extractor.take_text() == "".join(f" w{index}" for index in range(40))
    assert decoded == events[:1]  # the first taught the shape, its number left out
    assert extractor.chunk_template() is None  # no runs of chunks whose prefix changes
