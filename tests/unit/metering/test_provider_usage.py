"""Each provider's own usage report is read from its responses, however they are chunked.

The fixtures are responses as each provider's API reference shows them on the wire, one per
provider and mode; tests/fixtures/usage.json holds the usage each one reports.
"""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.metering.support import RESPONSES, Fixture, meter_fixture, one_byte_chunks, split

ALL = pytest.mark.parametrize("fixture", RESPONSES, ids=str)


@ALL
def test_a_whole_response_gives_the_reported_usage(fixture: Fixture) -> None:
    usage = meter_fixture(fixture, fixture.body)
    assert usage == fixture.expected
    assert (usage.input_source, usage.output_source, usage.source) == ("reported",) * 3


@ALL
def test_one_byte_chunks_give_the_same_usage(fixture: Fixture) -> None:
    assert meter_fixture(fixture, *one_byte_chunks(fixture.body)) == fixture.expected


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(fixture=st.sampled_from(RESPONSES), data=st.data())
def test_any_chunking_gives_the_same_usage(fixture: Fixture, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(fixture.body)), max_size=64))
    assert meter_fixture(fixture, *split(fixture.body, cuts)) == fixture.expected


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(fixture=st.sampled_from(RESPONSES), data=st.data())
def test_any_chunking_of_a_gzipped_response_gives_the_same_usage(
    fixture: Fixture, data: st.DataObject
) -> None:
    body = gzip.compress(fixture.body)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=64))
    usage = meter_fixture(fixture, *split(body, cuts), content_encoding="gzip")
    assert usage == fixture.expected


@ALL
def test_gzip_one_byte_at_a_time_gives_the_same_usage(fixture: Fixture) -> None:
    body = gzip.compress(fixture.body)
    assert meter_fixture(fixture, *one_byte_chunks(body), content_encoding="gzip") == (
        fixture.expected
    )


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
@ALL
def test_deflate_in_zlib_or_raw_framing_gives_the_same_usage(fixture: Fixture, wbits: int) -> None:
    compressor = zlib.compressobj(wbits=wbits)
    body = compressor.compress(fixture.body) + compressor.flush()
    chunks = split(body, range(0, len(body), 7))
    assert meter_fixture(fixture, *chunks, content_encoding="deflate") == fixture.expected


def test_gzip_in_several_members_is_read_to_the_end() -> None:
    fixture = next(f for f in RESPONSES if f.file == "openai_chat/stream.sse")
    half = len(fixture.body) // 2
    body = gzip.compress(fixture.body[:half]) + gzip.compress(fixture.body[half:])
    assert meter_fixture(fixture, body, content_encoding="gzip") == fixture.expected
