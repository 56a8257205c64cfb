"""SSEChunkRuns reads runs of one chunk shape as their text, and leaves all else to the parser.

The oracle is the plain path: the SSE parser over the whole stream, each event's data
decoded and its text taken by OpenAIChatUsage. A split is right if its segments explain that
list of events exactly, in order: each ``(not TEXT, sse)`` segment is whole events, the very
next ones of the reference; each ``(TEXT, text)`` segment stands for the next one or more
reference events, each a chunk of the template's shape, and is the text they carry.
"""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.metering.chunk_streams import (
    ANY_CONTENT,
    ESCAPED,
    GARBLED,
    PLAIN,
    TEMPLATE_SHAPES,
    data,
    events_of,
    fill,
    fragments,
    json_string,
    template_of,
    text_of,
)
from tests.unit.metering.support import one_byte_chunks, split
from x402_meter.metering.sse import SSEParser
from x402_meter.metering.sse_runs import TEXT, SSEChunkRuns

Segments = list[tuple[bool, str]]


def merged(segments: Segments) -> Segments:
    """Adjacent segments of one kind as one (batches of ``feed`` end at event boundaries)."""
    out: Segments = []
    for is_text, text in segments:
        if out and out[-1][0] == is_text:
            out[-1] = (is_text, out[-1][1] + text)
        else:
            out.append((is_text, text))
    return out


def parsed(sse: str) -> list[str]:
    """The events of a segment for the parser, which must hold whole events only."""
    assert sse, "an empty segment"
    assert sse.endswith("\n\n"), repr(sse[-40:])
    parser = SSEParser()
    events = parser.feed_data(sse.encode("utf-8", "surrogatepass"))
    assert parser.idle, "a segment for the parser ends inside an event"
    return events


def explains(segments: Segments, reference: list[str], template: tuple[str, str]) -> bool:
    """Whether ``segments`` account for each event of ``reference`` once, in order."""
    prefix, suffix = template
    parts = [(is_text, text if is_text else parsed(text)) for is_text, text in merged(segments)]
    texts = [text_of(event) for event in reference]

    def of_the_shape(event: str) -> bool:
        if not (event.startswith(prefix) and event.endswith(suffix)):
            return False
        body = event[len(prefix) : len(event) - len(suffix)]
        return len(event) >= len(prefix) + len(suffix) and json_string(body) is not None

    @cache
    def explained(part: int, event: int) -> bool:
        if part == len(parts):
            return event == len(reference)
        is_text, value = parts[part]
        if not is_text:
            events = list(value)
            return reference[event : event + len(events)] == events and explained(
                part + 1, event + len(events)
            )
        assert isinstance(value, str)
        so_far = ""
        for index in range(event, len(reference)):
            if not of_the_shape(reference[index]):
                return False
            so_far += texts[index]
            if not value.startswith(so_far):
                return False
            if so_far == value and explained(part + 1, index + 1):
                return True
        return False

    return explained(0, 0)


def rendered(segments: Segments) -> str:
    """All the generated text the segments hold: what a meter counts from them."""
    return "".join(
        text if is_text else "".join(map(text_of, parsed(text))) for is_text, text in segments
    )


STREAMS = st.sampled_from(TEMPLATE_SHAPES).flatmap(
    lambda shape: st.tuples(
        st.just(shape),
        st.one_of(
            # nothing but chunks of the template: the batch path
            st.lists(PLAIN.map(lambda text: data(fill(shape, text))), min_size=1, max_size=12),
            st.lists(ESCAPED.map(lambda text: data(fill(shape, text))), min_size=1, max_size=12),
            st.lists(
                ANY_CONTENT.map(lambda text: data(fill(shape, text))), min_size=1, max_size=12
            ),
            # anything
            st.lists(fragments(shape, PLAIN), max_size=24),
            st.lists(fragments(shape, ANY_CONTENT), max_size=24),
        ).map("".join),
    )
)


def whole(stream: str) -> str:
    """``stream`` ended at an event boundary, as split() takes it."""
    return stream if stream.endswith("\n\n") else stream + "\n\n"


# --- split ------------------------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(shape_and_stream=STREAMS)
def test_split_explains_the_events_the_parser_reads(shape_and_stream: tuple[str, str]) -> None:
    shape, stream = shape_and_stream
    text = whole(stream)
    template = template_of(shape)
    segments = SSEChunkRuns(*template).split(text)
    reference = events_of(text.encode())
    assert explains(segments, reference, template)
    assert rendered(segments) == "".join(map(text_of, reference))
    # and the segments for the parser are pieces of the stream's own text, in order
    position = 0
    for is_text, sse in segments:
        if not is_text:
            position = text.index(sse, position) + len(sse)


@settings(max_examples=300, deadline=None)
@given(
    shape=st.sampled_from(TEMPLATE_SHAPES),
    contents=st.lists(PLAIN, min_size=1, max_size=20),
)
def test_a_batch_of_plain_chunks_is_one_text_segment(shape: str, contents: list[str]) -> None:
    text = "".join(data(fill(shape, content)) for content in contents)
    assert SSEChunkRuns(*template_of(shape)).split(text) == [(TEXT, "".join(contents))]


@settings(max_examples=300, deadline=None)
@given(
    shape=st.sampled_from(TEMPLATE_SHAPES),
    contents=st.lists(ESCAPED, min_size=2, max_size=20),
)
def test_a_batch_of_escaped_chunks_is_one_segment_of_decoded_text(
    shape: str, contents: list[str]
) -> None:
    text = "".join(data(fill(shape, content)) for content in contents)
    decoded = [json_string(content) for content in contents]
    assert SSEChunkRuns(*template_of(shape)).split(text) == [(TEXT, "".join(map(str, decoded)))]


@pytest.mark.parametrize("shape", TEMPLATE_SHAPES)
def test_runs_between_other_events_are_text_and_the_rest_is_left_whole(shape: str) -> None:
    chunk = [data(fill(shape, word)) for word in ("one", " two", " three", " four")]
    other = [": ping\n\n", "event: e\ndata: {}\n\n", data('{"choices":[],"usage":null}')]
    text = other[0] + chunk[0] + chunk[1] + other[1] + other[2] + chunk[2] + chunk[3] + other[0]
    template = template_of(shape)
    segments = SSEChunkRuns(*template).split(text)
    reference = events_of(text.encode())
    assert explains(segments, reference, template)
    # a chunk followed by another chunk is read as text (the last of a run may be parsed)
    assert [is_text for is_text, _ in segments] == [False, True, False, True, False]
    assert segments[0] == (not TEXT, other[0])
    assert segments[1][1] in ("one", "one two")
    assert segments[2][1].endswith(other[1] + other[2])
    assert segments[3][1] in (" three", " three four")
    assert segments[4][1].endswith(other[0])


@pytest.mark.parametrize(
    "content",
    ['a"b', "a\\ b", "a\\x", "a\x01b", "ends with \\", "a\nb", "a\n\nb", '"content":"'],
    ids=repr,
)
def test_a_chunk_that_is_not_of_the_shape_goes_to_the_parser(content: str) -> None:
    shape = TEMPLATE_SHAPES[0]
    before, after = data(fill(shape, "x")), data(fill(shape, "y"))
    text = before * 3 + data(fill(shape, content)) + after * 3
    segments = SSEChunkRuns(*template_of(shape)).split(text)
    reference = events_of(text.encode())
    assert explains(segments, reference, template_of(shape))
    assert rendered(segments) == "".join(map(text_of, reference))
    assert segments[0] == (TEXT, "xxx")
    assert segments[-1] == (TEXT, "yyy")


def test_templates_that_are_not_a_json_strings_text_are_refused() -> None:
    with pytest.raises(ValueError, match="not the template"):
        SSEChunkRuns('{"choices":[{"delta":{"content":', '"}}]}')
    with pytest.raises(ValueError, match="not the template"):
        SSEChunkRuns('{"a":\n"', '"}')
    with pytest.raises(ValueError, match="key is in the template's suffix"):
        SSEChunkRuns('{"content":"', '","content":"x"}')


# --- feed -------------------------------------------------------------------------------------

GARBAGE = st.sampled_from([GARBLED.encode(), b"\xff", b"\xe2\x82", b"\xc3", b"\xed\xa0\x80"])


@settings(max_examples=500, deadline=None)
@given(
    shape_and_stream=STREAMS,
    tail=st.sampled_from(["", "data: ", "data: {", ": ping\n", "data: x\n", "\n"]),
    garbage=GARBAGE,
    cuts=st.just("bytes") | st.lists(st.integers(0, 4000), max_size=12),
)
def test_feed_in_any_chunking_gives_what_one_feed_gives(
    shape_and_stream: tuple[str, str], tail: str, garbage: bytes, cuts: str | list[int]
) -> None:
    shape, stream = shape_and_stream
    body = (whole(stream) + tail).encode().replace(GARBLED.encode(), garbage)
    template = template_of(shape)
    chunks = one_byte_chunks(body) if isinstance(cuts, str) else split(body, cuts)
    assert b"".join(chunks) == body

    runs = SSEChunkRuns(*template)
    segments: Segments = []
    fed = b""
    for chunk in chunks:
        segments += runs.feed(chunk)
        fed += chunk
        # the carry: the end of what was fed, after the last event boundary given
        assert fed.endswith(runs.carry)
        assert b"\n\n" not in runs.carry
        given_on = fed[: len(fed) - len(runs.carry)]
        assert not given_on or given_on.endswith(b"\n\n")
    events_end = body.rfind(b"\n\n") + 2
    assert runs.carry.lstrip(b"\n") == body[events_end:].lstrip(b"\n")  # blank lines aside

    at_once = SSEChunkRuns(*template)
    one_feed = at_once.feed(body)
    assert at_once.carry.lstrip(b"\n") == runs.carry.lstrip(b"\n")
    reference = events_of(body[:events_end])
    assert explains(segments, reference, template)
    assert explains(one_feed, reference, template)
    assert rendered(segments) == rendered(one_feed) == "".join(map(text_of, reference))


def test_feed_carries_an_event_until_its_blank_line() -> None:
    shape = TEMPLATE_SHAPES[0]
    runs = SSEChunkRuns(*template_of(shape))
    event = data(fill(shape, "héllo")).encode()
    assert runs.feed(event[:-1]) == []
    assert runs.carry == event[:-1]
    assert runs.feed(event[-1:] + event[:5]) == [(TEXT, "héllo")]
    assert runs.carry == event[:5]
    assert runs.feed(event[5:] + event) == [(TEXT, "héllohéllo")]
    assert runs.carry == b""
