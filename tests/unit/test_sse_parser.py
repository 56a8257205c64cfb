"""SSEParser follows the WHATWG "event stream interpretation" over arbitrary byte chunks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x402_meter.metering.sse import SSEEvent, SSEParser

LINE_ENDS = ["\n", "\r\n", "\r"]


def parse(*chunks: bytes) -> list[SSEEvent]:
    """Every event the parser gives, chunk by chunk, then at close."""
    parser = SSEParser()
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return events + parser.close()


def split(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(stream)]
    return [stream[start:end] for start, end in pairwise(bounds)]


@pytest.mark.parametrize("end", LINE_ENDS)
def test_lf_crlf_and_cr_all_end_lines(end: str) -> None:
    stream = f"event: a{end}data: 1{end}{end}data: 2{end}{end}".encode()
    assert parse(stream) == [SSEEvent("1", "a"), SSEEvent("2")]


def test_a_crlf_split_across_chunks_is_one_line_end() -> None:
    # Were CR and LF two line ends, the empty line between them would dispatch "a" alone.
    assert parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [SSEEvent("a\nb")]


def test_a_cr_at_a_chunk_end_followed_by_text_ends_the_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\rdata: b\r\r") == [SSEEvent("a")]
    assert parser.close() == [SSEEvent("b")]


def test_data_lines_are_joined_with_lf() -> None:
    assert parse(b"data: one\ndata: two\ndata: three\n\n") == [SSEEvent("one\ntwo\nthree")]


def test_comments_are_ignored() -> None:
    stream = b": keep-alive\ndata: x\n:another\ndata: y\n\n: only a comment\n\n"
    assert parse(stream) == [SSEEvent("x\ny")]


def test_event_sets_the_type_of_the_next_event_only() -> None:
    assert parse(b"event: update\ndata: 1\n\ndata: 2\n\n") == [
        SSEEvent("1", "update"),
        SSEEvent("2", "message"),
    ]


def test_an_empty_event_field_means_message() -> None:
    assert parse(b"event:\ndata: x\n\n") == [SSEEvent("x", "message")]


def test_id_sets_the_last_event_id_which_persists() -> None:
    assert parse(b"id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\n") == [
        SSEEvent("a", id="7"),
        SSEEvent("b", id="7"),
        SSEEvent("c", id=""),
    ]


def test_an_id_containing_nul_is_ignored() -> None:
    assert parse(b"id: 1\n\nid: 2\x003\ndata: x\n\n") == [SSEEvent("x", id="1")]


def test_unknown_fields_are_ignored() -> None:
    assert parse(b"retry: 1000\nfoo: bar\nDATA: no\ndata: yes\n\n") == [SSEEvent("yes")]


def test_a_leading_bom_is_dropped() -> None:
    assert parse(b"\xef\xbb\xbfdata: x\n\n") == [SSEEvent("x")]


def test_a_leading_bom_split_across_chunks_is_dropped() -> None:
    assert parse(b"\xef", b"\xbb", b"\xbfdata: x\n\n") == [SSEEvent("x")]


def test_only_one_leading_bom_is_dropped() -> None:
    # The second BOM is part of the first field name, "\ufeffdata", which is unknown.
    assert parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n") == [SSEEvent("y")]


def test_a_bom_after_the_start_is_kept() -> None:
    assert parse(b"data: \xef\xbb\xbfx\n\n") == [SSEEvent("\ufeffx")]


def test_data_without_a_colon_is_an_empty_data_line() -> None:
    assert parse(b"data\n\n") == [SSEEvent("")]
    assert parse(b"data\ndata\n\n") == [SSEEvent("\n")]


@pytest.mark.parametrize(
    ("line", "data"),
    [(b"data:x", "x"), (b"data: x", "x"), (b"data:  x", " x"), (b"data: x ", "x "), (b"data:", "")],
)
def test_a_single_space_after_the_colon_is_removed(line: bytes, data: str) -> None:
    assert parse(line + b"\n\n") == [SSEEvent(data)]


def test_a_colon_in_the_value_is_kept() -> None:
    assert parse(b'data: {"a": "b:c"}\n\n') == [SSEEvent('{"a": "b:c"}')]


def test_an_event_without_data_is_not_dispatched() -> None:
    assert parse(b"event: ping\nid: 1\n\n") == []


def test_an_event_without_data_resets_the_event_type() -> None:
    assert parse(b"event: ping\n\ndata: x\n\n") == [SSEEvent("x", "message", None)]


def test_events_are_returned_as_soon_as_their_blank_line_arrives() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\ndata: b") == [SSEEvent("a")]


def test_close_drops_an_event_without_its_blank_line() -> None:
    assert parse(b"data: a\n\ndata: b\n") == [SSEEvent("a")]


def test_close_drops_an_unterminated_final_line_event() -> None:
    assert parse(b"data: a\n\ndata: b") == [SSEEvent("a")]


def test_close_flushes_a_final_cr_as_a_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r\r") == []  # the last CR might have been half a CRLF
    assert parser.close() == [SSEEvent("a")]


def test_close_on_an_empty_stream_gives_nothing() -> None:
    assert SSEParser().close() == []


def test_multibyte_utf8_split_across_chunks_decodes() -> None:
    stream = "data: é€😀 ok\n\n".encode()
    for cut in range(len(stream)):
        assert parse(stream[:cut], stream[cut:]) == [SSEEvent("é€😀 ok")]
    assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == [SSEEvent("é€😀 ok")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert parse(b"data: a\xffb\n\n") == [SSEEvent("a\ufffdb")]


def test_an_event_over_the_bound_is_dropped_and_the_next_kept() -> None:
    parser = SSEParser(max_event_size=10)
    events = parser.feed(b"data: 12345\ndata: 67890\ndata: x\n\ndata: ok\n\n")
    assert events == [SSEEvent("ok")]
    assert parser.dropped > 0


@pytest.mark.parametrize("end", LINE_ENDS)
def test_a_line_over_the_bound_is_dropped_with_its_event(end: str) -> None:
    parser = SSEParser(max_event_size=10)
    long_line = b"data: " + b"x" * 30
    events = [
        *parser.feed(long_line[:20]),
        *parser.feed(long_line[20:]),
        *parser.feed(f"{end}data: y{end}{end}event: e{end}data: ok{end}{end}".encode()),
        *parser.close(),
    ]
    assert events == [SSEEvent("ok", "e")]
    assert parser.dropped >= 30


@pytest.mark.parametrize(
    ("rest", "kept"),
    [
        (b"\ndata: a\r\n\r\ndata: b\r\n\r\n", "b"),  # CRLF: "a" is in the dropped event
        (b"\rdata: a\r\r", "a"),  # CR, then a blank line: "a" is an event of its own
    ],
)
def test_a_cr_ending_a_dropped_line_is_still_a_line_end(rest: bytes, kept: str) -> None:
    parser = SSEParser(max_event_size=8)
    events = [*parser.feed(b"data: xxxxxxxxxx\r"), *parser.feed(rest), *parser.close()]
    assert events == [SSEEvent(kept)]


# --- properties ------------------------------------------------------------------------------

FIELD_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=12)


@dataclass(frozen=True)
class Block:
    data: Sequence[str]
    event: str | None
    id: str | None
    comment: str | None


BLOCKS = st.builds(
    Block,
    data=st.lists(FIELD_TEXT, max_size=3),
    event=st.none() | FIELD_TEXT,
    id=st.none() | FIELD_TEXT,
    comment=st.none() | FIELD_TEXT,
)


def serialize(blocks: Sequence[Block], end: str, bom: bool) -> bytes:
    lines: list[str] = []
    for block in blocks:
        if block.comment is not None:
            lines.append(":" + block.comment)
        if block.event is not None:
            lines.append("event: " + block.event)
        if block.id is not None:
            lines.append("id: " + block.id)
        lines.extend("data: " + data for data in block.data)
        lines.append("")
    return ("\ufeff" if bom else "").encode() + "".join(line + end for line in lines).encode()


def expected_events(blocks: Sequence[Block]) -> list[SSEEvent]:
    events, last_id = [], None
    for block in blocks:
        if block.id is not None:
            last_id = block.id
        if block.data:
            events.append(SSEEvent("\n".join(block.data), block.event or "message", last_id))
    return events


@settings(max_examples=300)
@given(
    blocks=st.lists(BLOCKS, max_size=6),
    end=st.sampled_from(LINE_ENDS),
    bom=st.booleans(),
)
def test_a_stream_of_events_parses_to_those_events(
    blocks: list[Block], end: str, bom: bool
) -> None:
    assert parse(serialize(blocks, end, bom)) == expected_events(blocks)


@settings(max_examples=300)
@given(
    data=st.data(),
    blocks=st.lists(BLOCKS, max_size=6),
    end=st.sampled_from(LINE_ENDS),
    bom=st.booleans(),
)
def test_any_chunking_of_a_stream_gives_the_same_events(
    data: st.DataObject, blocks: list[Block], end: str, bom: bool
) -> None:
    stream = serialize(blocks, end, bom)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=len(stream)))
    assert parse(*split(stream, cuts)) == parse(stream) == expected_events(blocks)


@settings(max_examples=200)
@given(blocks=st.lists(BLOCKS, max_size=4), end=st.sampled_from(LINE_ENDS), bom=st.booleans())
def test_one_byte_chunks_give_the_same_events(blocks: list[Block], end: str, bom: bool) -> None:
    stream = serialize(blocks, end, bom)
    assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == parse(stream)


@settings(max_examples=300)
@given(data=st.data(), stream=st.binary(max_size=200))
def test_any_chunking_of_arbitrary_bytes_gives_the_same_events(
    data: st.DataObject, stream: bytes
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=len(stream)))
    assert parse(*split(stream, cuts)) == parse(stream)


@settings(max_examples=300)
@given(
    data=st.data(),
    pieces=st.lists(
        st.sampled_from(["data", "event", "id", ":", " ", "x", "é", "\r", "\n", "\ufeff"])
    ),
)
def test_any_chunking_of_field_like_text_gives_the_same_events(
    data: st.DataObject, pieces: list[str]
) -> None:
    stream = "".join(pieces).encode()
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=len(stream)))
    assert parse(*split(stream, cuts)) == parse(stream)


@settings(max_examples=300)
@given(
    data=st.data(),
    pieces=st.lists(st.sampled_from(["data: ", "event: ", ":", "xxxx", "é", "\r", "\n", "\n\n"])),
    bound=st.integers(1, 12),
)
def test_any_chunking_gives_the_same_events_under_a_size_bound(
    data: st.DataObject, pieces: list[str], bound: int
) -> None:
    stream = "".join(pieces).encode()
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=len(stream)))

    def bounded(*chunks: bytes) -> list[SSEEvent]:
        parser = SSEParser(max_event_size=bound)
        return [event for chunk in chunks for event in parser.feed(chunk)] + parser.close()

    assert bounded(*split(stream, cuts)) == bounded(stream)
