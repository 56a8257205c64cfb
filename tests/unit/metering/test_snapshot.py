"""A snapshot is the count so far during a stream, and leaves the final count unchanged."""

from __future__ import annotations

import re

import pytest

from tests.unit.metering.support import RESPONSES, Fixture
from x402_meter.metering import ResponseInfo, Usage, auto_meter
from x402_meter.metering.meter import BodyMeter

SSE_FIXTURES = [f for f in RESPONSES if f.content_type == "text/event-stream"]
EVENT_END = re.compile(rb"\r\n\r\n|\n\n")


def meter(fixture: Fixture) -> BodyMeter:
    made = auto_meter(fixture.info())
    assert isinstance(made, BodyMeter)
    return made


@pytest.mark.parametrize("fixture", SSE_FIXTURES, ids=str)
def test_a_snapshot_after_each_event_counts_what_a_stream_cut_there_would(
    fixture: Fixture,
) -> None:
    running = meter(fixture)
    position = 0
    for end in EVENT_END.finditer(fixture.body):
        running.feed(fixture.body[position : end.end()])
        position = end.end()
        cut_there = meter(fixture)
        cut_there.feed(fixture.body[: end.end()])
        assert running.snapshot() == cut_there.finish()
    running.feed(fixture.body[position:])
    assert running.finish() == fixture.expected


def test_a_snapshot_before_the_provider_is_known_counts_the_text_so_far() -> None:
    running = auto_meter(ResponseInfo(200, "text/event-stream"))
    assert isinstance(running, BodyMeter)
    running.feed(b'data: {"type": "ping"}\n\n')
    assert running.snapshot().output_source == "estimated"
    running.feed(
        b'data: {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}\n\n'
    )
    assert running.finish() == Usage(2, 3)


def test_after_finish_a_snapshot_is_the_final_count() -> None:
    fixture = SSE_FIXTURES[0]
    done = meter(fixture)
    done.feed(fixture.body)
    assert done.snapshot() == done.finish() == fixture.expected
