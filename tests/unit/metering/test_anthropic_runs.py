"""Anthropic streams read as runs of ``content_block_delta`` chunks count what parsing every
event counts.

Anthropic names its events (an ``event:`` line before each ``data:`` line), and its text
deltas differ only in their text: the meter learns their shape and reads runs of them without
the SSE parser or a JSON decode per event. The reference is the same meter with its fast
paths off (``accelerate=False``). Streams are made with and without the
closing usage report (without it the output is estimated from the text, so every delta's text
counts), cut into random chunks, snapshots taken between.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.metering.chunk_streams import ANY_CONTENT, ESCAPED, PLAIN
from tests.unit.metering.support import split
from x402_meter.metering import ResponseInfo, auto_meter
from x402_meter.metering.meter import BodyMeter
from x402_meter.metering.sse_runs import TEXT, SSEChunkRuns

INFO = ResponseInfo(200, "text/event-stream", None, b'{"messages":[]}', "/v1/messages")
START = {
    "type": "message_start",
    "message": {"model": "claude-x", "usage": {"input_tokens": 25, "output_tokens": 1}},
}
DELTA = '{"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":"%s"}}'
ANTHROPIC_BREAKING = ['","text":"', '"},"x":{"text":"', '"}}\n\nevent: ping\ndata: {"x":"']
"""What ends the text early or starts another event: not a chunk of the shape."""


def event(name: str, payload: str | dict[str, Any]) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"event: {name}\ndata: {text}\n\n"


def delta(body: str, index: int = 0) -> str:
    return event("content_block_delta", DELTA % (index, body))


OTHER_EVENTS = st.sampled_from(
    [
        event("ping", {"type": "ping"}),
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "content_block_start",
            {"type": "content_block_start", "index": 1, "content_block": {"type": "text"}},
        ),
        event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"thinking": "hm, ok"}},
        ),
        "data: " + DELTA % (0, "no event line") + "\n\n",
        ": keep-alive\n\n",
    ]
)
BODIES = ANY_CONTENT | st.lists(st.sampled_from(ANTHROPIC_BREAKING), max_size=1).map("".join)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    index = draw(st.sampled_from([0, 1]))
    run = st.lists((PLAIN | ESCAPED).map(lambda body: delta(body, index)), min_size=1, max_size=40)
    blocks = draw(st.lists(run | st.lists(BODIES.map(delta) | OTHER_EVENTS, max_size=3)))
    events = [event("message_start", START)] + [e for block in blocks for e in block]
    if draw(st.booleans()):
        usage = {"type": "message_delta", "usage": {"output_tokens": 42}}
        events += [event("message_delta", usage), event("message_stop", {"type": "message_stop"})]
    return "".join(events).encode()


@settings(max_examples=400, deadline=None)
@given(stream=streams(), data=st.data(), snapshots=st.sets(st.integers(0, 12), max_size=4))
def test_runs_of_deltas_count_what_parsing_every_event_counts(
    stream: bytes, data: st.DataObject, snapshots: set[int]
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    fast, reference = auto_meter(INFO), auto_meter(INFO, accelerate=False)
    assert isinstance(fast, BodyMeter)
    assert isinstance(reference, BodyMeter)
    for index, chunk in enumerate(split(stream, cuts)):
        fast.feed(chunk)
        reference.feed(chunk)
        if index in snapshots:
            assert fast.snapshot() == reference.snapshot()
    assert fast.finish() == reference.finish()


def test_a_long_run_of_deltas_is_read_as_runs(monkeypatch: Any) -> None:
    words = [" word", " é", " 日本", "!", ' \\"quoted\\"', "\\n"]
    body = event("message_start", START) + "".join(delta(words[i % 6]) for i in range(3000))
    stream = body.encode()
    fast, reference = auto_meter(INFO), auto_meter(INFO, accelerate=False)
    runs: list[str] = []
    split_runs = SSEChunkRuns.split

    def recorded(self: SSEChunkRuns, text: str) -> list[tuple[bool, str]]:
        segments = split_runs(self, text)
        runs.extend(run for is_text, run in segments if is_text is TEXT)
        return segments

    monkeypatch.setattr(SSEChunkRuns, "split", recorded)
    for chunk in split(stream, range(0, len(stream), 16 * 1024)):
        fast.feed(chunk)
        reference.feed(chunk)
    # the deltas' shape was learned, with its event line: nearly all read as runs of text
    assert len("".join(runs)) > 2900 * 3
    assert fast.finish() == reference.finish()
    assert fast.finish().output_source == "estimated"
