"""The incremental readers: NDJSON lines, top-level JSON values, gzip/deflate bodies."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.metering.support import one_byte_chunks, split
from x402_meter.metering.decompress import Decompressor
from x402_meter.metering.json_values import JSONValuesReader
from x402_meter.metering.ndjson import NDJSONReader


def ndjson(*chunks: bytes, max_line_size: int = 1 << 20) -> list[str]:
    reader = NDJSONReader(max_line_size)
    return [line for chunk in chunks for line in reader.feed(chunk)] + reader.close()


def values(*chunks: bytes, max_value_size: int = 1 << 20) -> list[Any]:
    reader = JSONValuesReader(max_value_size)
    texts = [value for chunk in chunks for value in reader.feed(chunk)] + reader.close()
    return [json.loads(text) for text in texts]


def inflate(encoding: str, *chunks: bytes, piece_size: int = 1 << 16) -> bytes:
    decompressor = Decompressor(encoding, piece_size)
    pieces = [piece for chunk in chunks for piece in decompressor.feed(chunk)]
    return b"".join([*pieces, *decompressor.close()])


JSON_OBJECTS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(st.characters(codec="utf-8")),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
).map(lambda value: {"v": value})

# --- NDJSON ----------------------------------------------------------------------------------


def test_ndjson_gives_each_line_without_its_line_end() -> None:
    assert ndjson(b'{"a":1}\n{"b":2}\r\n') == ['{"a":1}', '{"b":2}']


def test_ndjson_skips_blank_lines_and_keeps_a_last_line_without_lf() -> None:
    assert ndjson(b"\n\n1\n \r\n2") == ["1", "2"]


def test_ndjson_gives_a_line_as_soon_as_its_lf_arrives() -> None:
    reader = NDJSONReader()
    assert reader.feed(b'{"a":') == []
    assert reader.feed(b'1}\n{"b"') == ['{"a":1}']


def test_ndjson_drops_a_line_over_the_bound_and_keeps_the_next() -> None:
    reader = NDJSONReader(max_line_size=10)
    lines = reader.feed(b"x" * 8) + reader.feed(b"x" * 8) + reader.feed(b"yy\nok\n")
    assert lines == ["ok"]
    assert reader.dropped == 18


@settings(max_examples=200)
@given(
    data=st.data(), lines=st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\n")))
)
def test_ndjson_any_chunking_gives_the_same_lines(data: st.DataObject, lines: list[str]) -> None:
    body = "".join(line + "\n" for line in lines).encode()
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=30))
    assert ndjson(*split(body, cuts)) == [line.strip() for line in lines if line.strip()]


# --- JSON values ----------------------------------------------------------------------------


def test_a_json_object_body_is_one_value() -> None:
    assert values(b' {"a": [1, {"b": "}"}]} ') == [{"a": [1, {"b": "}"}]}]


def test_each_element_of_a_top_level_array_is_a_value_as_soon_as_it_closes() -> None:
    reader = JSONValuesReader()
    assert reader.feed(b'[{"n": 1}\n,\r\n{"n"') == ['{"n": 1}']
    assert reader.feed(b": 2}\n]") == ['{"n": 2}']


def test_brackets_quotes_and_backslashes_in_strings_are_text() -> None:
    body = rb'[{"t": "a \"quoted\" ] } [ { \\"}, {"u": "\\\\\\"}]'
    assert values(body) == json.loads(body)
    assert values(*one_byte_chunks(body)) == json.loads(body)


def test_scalars_at_the_top_level_are_skipped() -> None:
    assert values(b'[1, "x{", null, {"a": 1}, [2]]') == [{"a": 1}, [2]]


def test_objects_that_follow_one_another_are_each_a_value() -> None:
    assert values(b'{"a": 1}\n{"b": 2}\n') == [{"a": 1}, {"b": 2}]


def test_an_unfinished_value_is_given_to_no_one() -> None:
    assert values(b'[{"a": 1}, {"b": ') == [{"a": 1}]


def test_a_value_over_the_bound_is_dropped_and_the_next_kept() -> None:
    reader = JSONValuesReader(max_value_size=16)
    texts = reader.feed(b'[{"big": "' + b"x" * 10) + reader.feed(b"x" * 10 + b'"}, {"ok": 1}]')
    assert texts == ['{"ok": 1}']
    assert reader.dropped > 20


@settings(max_examples=200)
@given(data=st.data(), objects=st.lists(JSON_OBJECTS, max_size=5), indent=st.none() | st.just(2))
def test_any_chunking_of_a_streamed_array_gives_its_elements(
    data: st.DataObject, objects: list[dict[str, Any]], indent: int | None
) -> None:
    body = json.dumps(objects, indent=indent, ensure_ascii=False).encode()
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=40))
    assert values(*split(body, cuts)) == objects


@settings(max_examples=200)
@given(data=st.data(), body=st.binary(max_size=200))
def test_any_chunking_of_arbitrary_bytes_gives_the_same_values(
    data: st.DataObject, body: bytes
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=40))
    whole = JSONValuesReader()
    expected = whole.feed(body) + whole.close()
    pieces = JSONValuesReader()
    assert [v for c in split(body, cuts) for v in pieces.feed(c)] + pieces.close() == expected


# --- gzip and deflate -------------------------------------------------------------------------

PAYLOAD = b"data: " + "é🙂 payload ".encode() * 500 + b"\n\n"


def test_gzip_is_inflated_chunk_by_chunk() -> None:
    body = gzip.compress(PAYLOAD)
    assert inflate("gzip", *split(body, range(0, len(body), 3))) == PAYLOAD
    assert inflate("x-gzip", body) == PAYLOAD


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
def test_deflate_is_read_in_zlib_or_raw_framing(wbits: int) -> None:
    compressor = zlib.compressobj(wbits=wbits)
    body = compressor.compress(PAYLOAD) + compressor.flush()
    assert inflate("deflate", *one_byte_chunks(body)) == PAYLOAD


def test_a_small_chunk_that_inflates_to_a_lot_comes_out_in_bounded_pieces() -> None:
    bomb = gzip.compress(b"\0" * 5_000_000)
    decompressor = Decompressor("gzip", piece_size=1024)
    sizes = [len(piece) for piece in decompressor.feed(bomb)]
    assert max(sizes) <= 1024
    assert sum(sizes) == 5_000_000


def test_corrupt_input_ends_the_output_without_raising() -> None:
    body = gzip.compress(PAYLOAD)
    decompressor = Decompressor("gzip")
    good = b"".join(decompressor.feed(body[:40]))
    assert b"".join(decompressor.feed(b"\xff" * 64 + body[40:])) == b""
    assert decompressor.failed
    assert PAYLOAD.startswith(good)


def test_gzip_padding_after_the_last_member_is_ignored() -> None:
    assert inflate("gzip", gzip.compress(PAYLOAD) + b"\0" * 8) == PAYLOAD


def test_an_unsupported_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="br"):
        Decompressor("br")
