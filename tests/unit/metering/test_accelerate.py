"""The public seam: a meter with its fast paths on counts what the plain one counts.

``accelerate=False`` runs only the plain readers and extractors (the reference). For every
provider fixture, plain or gzipped, cut anywhere, with snapshots taken between chunks, the
accelerated meter gives the same :class:`Usage` at every snapshot and at the end.
"""

from __future__ import annotations

import gzip

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.metering.support import RESPONSES, Fixture, split
from x402_meter.metering import Meter, auto_meter, openai_chat_meter
from x402_meter.metering.meter import BodyMeter


def snapshot(meter: Meter) -> object:
    assert isinstance(meter, BodyMeter)
    return meter.snapshot()


@pytest.mark.parametrize("fixture", RESPONSES, ids=str)
@settings(max_examples=25, deadline=None)
@given(data=st.data(), gzipped=st.booleans())
def test_an_accelerated_meter_counts_what_the_plain_one_counts(
    fixture: Fixture, data: st.DataObject, gzipped: bool
) -> None:
    body = gzip.compress(fixture.body) if gzipped else fixture.body
    info = fixture.info("gzip" if gzipped else None)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    snapshots = data.draw(st.sets(st.integers(0, 12), max_size=4))
    fast, plain = auto_meter(info), auto_meter(info, accelerate=False)
    for index, chunk in enumerate(split(body, cuts)):
        fast.feed(chunk)
        plain.feed(chunk)
        if index in snapshots:
            assert snapshot(fast) == snapshot(plain)
    assert fast.finish() == plain.finish() == fixture.expected


@pytest.mark.parametrize("fixture", RESPONSES, ids=str)
def test_the_plain_meter_reads_each_fixture_as_reported(fixture: Fixture) -> None:
    plain = auto_meter(fixture.info(), accelerate=False)
    plain.feed(fixture.body)
    assert plain.finish() == fixture.expected


def test_openai_chat_meter_takes_the_seam_too() -> None:
    fixture = next(f for f in RESPONSES if f.file == "openai_chat/stream.sse")
    fast = openai_chat_meter(fixture.info())
    plain = openai_chat_meter(fixture.info(), accelerate=False)
    for chunk in split(fixture.body, range(0, len(fixture.body), 97)):
        fast.feed(chunk)
        plain.feed(chunk)
    assert fast.finish() == plain.finish() == fixture.expected
