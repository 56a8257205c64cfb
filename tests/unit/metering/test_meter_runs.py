"""A meter reading runs of chunks as text counts exactly what the plain path counts.

The reference is the same meter with its fast paths off (``accelerate=False``): every event
goes through the SSE parser line by line and is decoded. Streams are
random OpenAI chat streams, with or without a usage report, LF or CRLF, gzipped or not, with
events longer than the run reader carries, cut into random chunks, snapshots taken between.
"""

from __future__ import annotations

import dataclasses
import gzip
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.metering.chunk_streams import (
    ANY_CONTENT,
    CONTINUOUS_USAGE_SHAPE,
    FINISH,
    PLAIN,
    ROLE,
    TEMPLATE_SHAPES,
    USAGE_WITH_MODEL,
    USAGE_WITHOUT_MODEL,
    data,
    fill,
    fragments,
    named,
)
from tests.unit.metering.support import one_byte_chunks, split
from x402_meter.metering import Meter, ResponseInfo, Usage, auto_meter
from x402_meter.metering import meter as meter_module
from x402_meter.metering.meter import BodyMeter
from x402_meter.metering.openai_chat import OpenAIChatUsage
from x402_meter.metering.sse import SSEParser
from x402_meter.metering.sse_runs import MAX_CARRY, TEXT, SSEChunkRuns
from x402_meter.metering.tokenizer import estimate_tokens

REQUEST = b'{"messages":[]}'
INFO = ResponseInfo(200, "text/event-stream", None, REQUEST)


def meters(content_encoding: str | None = None) -> tuple[BodyMeter, BodyMeter]:
    """(the meter under test, the reference meter: the same with ``accelerate=False``) for
    one SSE response."""
    info = dataclasses.replace(INFO, content_encoding=content_encoding)
    fast, reference = auto_meter(info), auto_meter(info, accelerate=False)
    assert isinstance(fast, BodyMeter)
    assert isinstance(reference, BodyMeter)
    return fast, reference


LONG = 70_000
assert LONG > MAX_CARRY


def long_event(kind: str, shape: str) -> str:
    """One event longer than the run reader carries (the parser takes it over)."""
    if kind == "chunk":
        return data(fill(shape, "word " * (LONG // 5)))
    if kind == "comment":
        return ": " + "x" * LONG + "\n\n"
    return data('{"choices":[{"delta":{"content":"' + "é" * LONG + '"}}],"x":1}')


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], bool, bool]:
    """(SSE events, whether a usage report names the model, whether one is long)."""
    shape = draw(st.sampled_from(TEMPLATE_SHAPES))
    contents = draw(st.sampled_from([PLAIN, ANY_CONTENT]))
    chunk = contents.map(lambda text: data(fill(shape, text)))
    run = st.lists(PLAIN.map(lambda text: data(fill(shape, text))), min_size=1, max_size=10)
    blocks = draw(st.lists(run | st.lists(chunk | fragments(shape, contents), max_size=4)))
    events = [event for block in blocks for event in block]
    if draw(st.booleans()):
        events.insert(0, data(named(ROLE, shape)))
    usage = draw(st.sampled_from(["none", "end", "middle", "continuous"]))
    names_model = draw(st.booleans())
    report = data(named(USAGE_WITH_MODEL, shape) if names_model else USAGE_WITHOUT_MODEL)
    if usage == "end":
        events.append(report)
    elif usage == "middle":
        events.insert(draw(st.integers(0, len(events))), report)
    elif usage == "continuous":
        more = draw(st.lists(st.tuples(PLAIN, st.integers(0, 99)), min_size=1, max_size=6))
        for text, completion in more:
            at = draw(st.integers(0, len(events)))
            continuous = CONTINUOUS_USAGE_SHAPE.replace("%d", str(completion))
            events.insert(at, data(fill(continuous, text)))
    finish = data(named(FINISH, shape))
    events += draw(st.sampled_from([[], [finish], [finish, "data: [DONE]\n\n"]]))
    long = draw(st.sampled_from([None] * 10 + ["chunk", "comment", "other"]))
    if long is not None:
        events.insert(draw(st.integers(0, len(events))), long_event(long, shape))
    line_ends = draw(st.sampled_from(["lf"] * 5 + ["crlf", "one crlf event", "cr"]))
    if line_ends == "crlf":
        events = [event.replace("\n", "\r\n") for event in events]
    elif line_ends == "one crlf event" and events:
        at = draw(st.integers(0, len(events) - 1))
        events[at] = events[at].replace("\n", "\r\n")
    elif line_ends == "cr" and events:
        at = draw(st.integers(0, len(events) - 1))
        events[at] = events[at].replace("\n", "\r")
    cut_short = draw(st.sampled_from(["no", "no", "anywhere", "before the last LF"]))
    if events and cut_short == "anywhere":  # the last event unfinished
        events[-1] = events[-1][: draw(st.integers(0, len(events[-1])))]
    elif events and cut_short == "before the last LF":  # not ended: dropped at the close
        events[-1] = events[-1][:-1]
    # the counts are compared in full unless a usage report leaves the model out
    names_model = all('"model"' in event for event in events if '"prompt_tokens"' in event)
    return [event.encode() for event in events], names_model, long is not None


def gzipped_events(events: list[bytes]) -> list[bytes]:
    """Each event gzipped and flushed, as a server compressing each message sends it."""
    compressor = zlib.compressobj(wbits=31)
    pieces = [compressor.compress(event) + compressor.flush(zlib.Z_SYNC_FLUSH) for event in events]
    return [*pieces, compressor.flush()]


def without_model(usage: Usage) -> Usage:
    return dataclasses.replace(usage, model=None)


@settings(max_examples=500, deadline=None)
@given(
    stream=streams(),
    gzipped=st.booleans(),
    chunking=st.data(),
    snapshots=st.sets(st.integers(0, 40), max_size=6),
)
def test_the_runs_fast_path_counts_what_the_plain_path_counts(
    stream: tuple[list[bytes], bool, bool],
    gzipped: bool,
    chunking: st.DataObject,
    snapshots: set[int],
) -> None:
    events, names_model, long = stream
    pieces = gzipped_events(events) if gzipped else events
    body = b"".join(pieces)
    if gzipped:
        assert gzip.decompress(body) == b"".join(events)
    ends = list(accumulate(map(len, pieces)))
    how = chunking.draw(st.sampled_from(["events", "events", "events and cuts", "cuts", "bytes"]))
    if how == "bytes" and (long or len(body) > 6000):
        how = "cuts"
    if how == "bytes":
        chunks = one_byte_chunks(body)
        snapshots = {index * 97 for index in snapshots}
    else:
        cuts = [] if how == "events" else chunking.draw(st.lists(st.integers(0, len(body))))
        chunks = split(body, cuts if how == "cuts" else [*ends, *cuts])
    fast, reference = meters("gzip" if gzipped else None)
    # A usage report without a model: the model is only named if some chunk was decoded (by
    # the fast path's template, or a snapshot) before the report: see test_the_model_... below
    same = (lambda usage: usage) if names_model else without_model
    for index, chunk in enumerate(chunks):
        fast.feed(chunk)
        reference.feed(chunk)
        if index in snapshots:
            assert same(fast.snapshot()) == same(reference.snapshot())
    assert same(fast.finish()) == same(reference.finish())
    assert fast.snapshot() == fast.finish()


# --- the fast path is taken, and handed back --------------------------------------------------
#
# Seen from outside: what the meter under test gives its chunk-runs reader (SSEChunkRuns.split)
# and its SSE parser (feed_data, feed_text), recorded while the reference meter is not fed.


@dataclass
class Reads:
    """What the meter under test read, in order (only while ``on``)."""

    split: list[str] = field(default_factory=list)
    """The text each split of a chunk run was given."""
    texts: list[str] = field(default_factory=list)
    """The generated text the splits gave back as runs of chunks (kept without decoding)."""
    parsed: list[bytes] = field(default_factory=list)
    """What the SSE parser was fed (its text as UTF-8)."""
    on: bool = True

    @property
    def size(self) -> int:
        """Bytes read so far, by the runs reader and the parser."""
        return sum(len(text.encode()) for text in self.split) + sum(map(len, self.parsed))


@pytest.fixture
def reads(monkeypatch: Any) -> Reads:
    recorded = Reads()
    split_runs, feed_data, feed_text = SSEChunkRuns.split, SSEParser.feed_data, SSEParser.feed_text

    def split_recorded(self: SSEChunkRuns, text: str) -> list[tuple[bool, str]]:
        segments = split_runs(self, text)
        if recorded.on:
            recorded.split.append(text)
            recorded.texts += [run for is_text, run in segments if is_text is TEXT]
        return segments

    def feed_data_recorded(self: SSEParser, chunk: bytes) -> list[str]:
        if recorded.on:
            recorded.parsed.append(chunk)
        return feed_data(self, chunk)

    def feed_text_recorded(self: SSEParser, text: str) -> list[str]:
        if recorded.on:
            recorded.parsed.append(text.encode())
        return feed_text(self, text)

    monkeypatch.setattr(SSEChunkRuns, "split", split_recorded)
    monkeypatch.setattr(SSEParser, "feed_data", feed_data_recorded)
    monkeypatch.setattr(SSEParser, "feed_text", feed_text_recorded)
    return recorded


def fed(fast: Meter, reference: Meter, piece: bytes, reads: Reads | None = None) -> None:
    """``piece`` to both meters; only what the meter under test reads is recorded."""
    if reads is not None:
        reads.on = False
    reference.feed(piece)
    if reads is not None:
        reads.on = True
    fast.feed(piece)


@contextmanager
def reading(reads: Reads) -> Iterator[Reads]:
    """What was read inside the block (a fresh record, then added to ``reads``)."""
    inside = Reads()
    before = (len(reads.split), len(reads.texts), len(reads.parsed))
    yield inside
    inside.split += reads.split[before[0] :]
    inside.texts += reads.texts[before[1] :]
    inside.parsed += reads.parsed[before[2] :]


SHAPE = TEMPLATE_SHAPES[0]
WORDS = [" word", " é", " 日本", " 😀", "!"]


def chunks_of(*texts: str) -> bytes:
    return "".join(data(fill(SHAPE, text)) for text in texts).encode()


def test_chunks_whose_data_spans_two_lines_are_parsed_not_read_as_runs(reads: Reads) -> None:
    # Their shape has a line end in it (JSON whitespace between the data lines), which the
    # run reader cannot split on: the meter goes on parsing them.
    two_lines = '{"choices":[{"delta":\ndata: {"content":"%s"}}]}'
    body = "".join(data(fill(two_lines, text)) for text in ["Hello", *WORDS * 300]).encode()
    fast, reference = meters()
    for piece in batches(body):
        fed(fast, reference, piece, reads)
    assert fast.finish() == reference.finish()
    assert not reads.split
    assert fast.finish().output_tokens > 300


def test_a_run_of_chunks_is_kept_as_text_once_the_template_is_known(reads: Reads) -> None:
    fast, reference = meters()
    head = data(named(ROLE, SHAPE)).encode() + chunks_of("Hello")
    for chunk in (head, chunks_of(*WORDS * 20)):
        fed(fast, reference, chunk, reads)
    assert fast.snapshot() == reference.snapshot()
    assert "".join(reads.texts) == "".join(WORDS * 20)  # read as text, not decoded
    tail = chunks_of("bye") + data(FINISH).encode() + b"data: [DONE]\n\n"
    fed(fast, reference, tail)
    assert fast.finish() == reference.finish()
    assert fast.finish().output_source == "estimated"


@pytest.mark.parametrize("cr", [b"\r\n", b"\r"], ids=repr)
def test_a_chunk_with_a_cr_hands_the_stream_back_to_the_parser(reads: Reads, cr: bytes) -> None:
    fast, reference = meters()
    pieces = [
        chunks_of("Hello"),
        chunks_of(*WORDS),
        chunks_of(" a", " b")[:-5],  # an unfinished event carried
        chunks_of(" a", " b")[-5:-2] + cr + cr,  # the CR line ends
        chunks_of(" c"),
        chunks_of(" d").replace(b"\n", cr),
        chunks_of(" e"),
    ]
    for index, piece in enumerate(pieces):
        with reading(reads) as now:
            fed(fast, reference, piece, reads)
            assert fast.snapshot() == reference.snapshot(), index
        if cr in piece:  # the carried event and the piece went to the parser
            assert not now.split
            assert b"".join(now.parsed).endswith(piece)
    assert reads.texts  # the runs were read before
    assert not any("\r" in text for text in reads.split)
    assert fast.finish() == reference.finish()


def test_an_event_longer_than_the_carry_bound_is_read_by_the_parser(reads: Reads) -> None:
    fast, reference = meters()
    long = data(fill(SHAPE, "long " * (LONG // 5))).encode()
    pieces = [chunks_of("Hello"), chunks_of(*WORDS), long[:-10], long[-10:]]
    pieces += [chunks_of(*WORDS) for _ in range(3)]
    runs_read: list[bool] = []
    parsed_long: list[bool] = []
    for piece in pieces:
        with reading(reads) as now:
            fed(fast, reference, piece, reads)
            assert fast.snapshot() == reference.snapshot()
        runs_read.append(bool(now.texts))
        parsed_long.append(any(len(chunk) > MAX_CARRY for chunk in now.parsed))
    assert runs_read[1]  # the runs were read as text
    assert parsed_long[2]  # the long event went to the parser
    assert runs_read[4]  # and, from the batch after its end, the runs again
    assert fast.finish() == reference.finish()


def test_an_event_the_parser_began_is_ended_by_the_parser() -> None:
    fast, reference = meters()
    pieces = [
        chunks_of("Hello") + b"data: x\n",  # a template, and the parser inside an event
        chunks_of(" not", " a", " chunk"),  # its data goes on: one event of 2 lines, then 2
        chunks_of(*WORDS),
    ]
    for piece in pieces:
        fed(fast, reference, piece)
        assert fast.snapshot() == reference.snapshot()
    assert fast.finish() == reference.finish()


def test_an_event_carried_at_the_end_is_dropped_at_the_close_as_the_parser_drops_it(
    reads: Reads,
) -> None:
    fast, reference = meters()
    body = chunks_of("Hello") + chunks_of(*WORDS) + chunks_of(" last")[:-1]
    for piece in (chunks_of("Hello"), body[len(chunks_of("Hello")) :]):
        fed(fast, reference, piece, reads)
    assert fast.finish() == reference.finish()
    assert reads.texts  # the runs were read, the last event carried
    assert fast.finish().output_tokens == estimate_tokens("Hello" + "".join(WORDS))


# --- where the fast path and the plain path once differed ---------------------------------------


def test_the_model_does_not_depend_on_the_fast_path() -> None:
    fast, reference = meters()
    stream = [chunks_of("Hello"), chunks_of(*WORDS) + data(USAGE_WITHOUT_MODEL).encode()]
    for chunk in stream:
        fed(fast, reference, chunk)
    assert fast.finish() == reference.finish()


def test_the_estimate_over_the_kept_budget_does_not_depend_on_the_fast_path() -> None:
    fast = BodyMeter(INFO, extractor=OpenAIChatUsage(max_kept_size=2000))
    reference = BodyMeter(INFO, extractor=OpenAIChatUsage(max_kept_size=2000), accelerate=False)
    for chunk in (chunks_of("Hello"), chunks_of(*WORDS * 20)):
        fed(fast, reference, chunk)
    assert fast.finish() == reference.finish()


@pytest.mark.parametrize("usage", [None, USAGE_WITHOUT_MODEL], ids=["no usage", "usage"])
def test_a_long_first_batch_is_read_as_runs_after_its_first_events(
    reads: Reads, usage: str | None
) -> None:
    fast, reference = meters()
    body = data(named(ROLE, SHAPE)).encode() + chunks_of("Hello", *WORDS * 60)
    body += chunks_of("line\\nbreak", ' a \\"quote\\"') + chunks_of(*WORDS * 20)  # escaped
    if usage is not None:
        body += data(usage).encode()
    assert len(body) > 16 * 1024  # one batch, as X402Meter feeds it
    fed(fast, reference, body, reads)
    assert fast.snapshot() == reference.snapshot()
    assert sum(map(len, reads.parsed)) < 2 * 1024  # only its first events were parsed
    assert reads.split  # the rest went to the runs reader
    assert usage is not None or len("".join(reads.texts)) > 60 * len("".join(WORDS))
    assert fast.finish() == reference.finish()


# --- pieces held unread until a count is asked for -------------------------------------------


def batches(body: bytes, size: int = 16 * 1024) -> list[bytes]:
    return [body[index : index + size] for index in range(0, len(body), size)]


def test_a_stream_that_reports_its_usage_is_let_go_unread(reads: Reads) -> None:
    fast, reference = meters()
    body = data(named(ROLE, SHAPE)).encode() + chunks_of("Hello", *WORDS * 400)
    body += data(USAGE_WITHOUT_MODEL).encode() + b"data: [DONE]\n\n"
    pieces = batches(body)
    assert len(pieces) > 4
    for piece in pieces:
        fed(fast, reference, piece, reads)
    assert not reads.split  # held, not even searched
    assert sum(map(len, reads.parsed)) < 2 * 1024  # but for the first events of the first
    assert fast.finish() == reference.finish()
    assert len("".join(reads.split)) < 2 * 1024  # only from the report on: the rest never read


@pytest.mark.parametrize(
    "report",
    [
        '{"choices":[],"usage":{"prompt_tokens":3}}',  # no output count: not a whole report
        '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":"9"}}',
    ],
)
def test_a_partial_report_has_everything_held_read_in_order(report: str) -> None:
    fast, reference = meters()
    body = chunks_of("Hello", *WORDS * 400) + data(report).encode() + chunks_of(*WORDS * 5)
    for piece in batches(body):
        fed(fast, reference, piece)
    assert fast.snapshot() == reference.snapshot()
    assert fast.finish() == reference.finish()
    assert fast.finish().output_source == "estimated"


@pytest.mark.parametrize("done", [False, True])
def test_a_report_in_a_piece_of_its_own_is_found(reads: Reads, done: bool) -> None:
    fast, reference = meters()
    report = data(USAGE_WITHOUT_MODEL).encode()
    # The report starts right after the pieces before it: at the start of the data looked in.
    pieces = [*batches(chunks_of("Hello", *WORDS * 400)), report]
    if done:
        pieces.append(b"data: [DONE]\n\n")
    for piece in pieces:
        fed(fast, reference, piece, reads)
    assert fast.finish() == reference.finish()
    assert fast.finish().output_source == "reported"
    assert "".join(reads.split).startswith(report.decode())  # nothing before it was read


def test_a_whole_report_before_the_last_partial_one_has_everything_read() -> None:
    fast, reference = meters()
    partial = '{"choices":[],"usage":{"prompt_tokens":3}}'
    body = chunks_of("Hello", *WORDS * 400) + data(USAGE_WITHOUT_MODEL).encode()
    body += chunks_of(*WORDS * 5) + data(partial).encode()
    for piece in batches(body):
        fed(fast, reference, piece)
    assert fast.finish() == reference.finish()


@pytest.mark.parametrize("cut", [-20, -50, -70])
def test_a_report_split_between_two_pieces_is_found(cut: int) -> None:
    fast, reference = meters()
    body = chunks_of("Hello", *WORDS * 400) + data(USAGE_WITHOUT_MODEL).encode()
    pieces = [*batches(body[:cut]), body[cut:]]
    for piece in pieces:
        fed(fast, reference, piece)
    assert fast.finish() == reference.finish()
    assert fast.finish().output_tokens == 9


def test_what_is_held_is_bounded(reads: Reads, monkeypatch: Any) -> None:
    monkeypatch.setattr(meter_module, "DEFER_LIMIT", 40 * 1024)
    fast, reference = meters()
    body = chunks_of("Hello", *WORDS * 2000)
    pieces = batches(body)
    for index, piece in enumerate(pieces):
        fed(fast, reference, piece, reads)
        # all but what is held (and the event carried at the end of what was read)
        assert sum(map(len, pieces[: index + 1])) - reads.size <= 40 * 1024 + 1024
    assert reads.size < len(body)  # some is held at the end
    assert fast.snapshot() == reference.snapshot()
    assert fast.finish() == reference.finish()


def test_after_a_count_the_stream_is_held_again_and_its_end_let_go(reads: Reads) -> None:
    fast, reference = meters()
    report = data(USAGE_WITHOUT_MODEL).encode()
    pieces = batches(chunks_of("Hello", *WORDS * 800) + report)
    half = len(pieces) // 2
    for piece in pieces[:half]:
        fed(fast, reference, piece, reads)
    assert not reads.split  # held while no count was asked for
    assert fast.snapshot() == reference.snapshot()
    assert reads.size >= sum(map(len, pieces[:half])) - 1024  # read for the count
    seen = len(reads.split)
    with reading(reads) as now:
        for piece in pieces[half:]:
            fed(fast, reference, piece, reads)
    assert not now.split  # held again
    assert not now.parsed
    assert fast.finish() == reference.finish()
    assert fast.finish().output_source == "reported"
    assert len("".join(reads.split[seen:])) < 2 * 1024  # the end: only its report was read
