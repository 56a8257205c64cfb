"""Shared by the metering tests: the fixtures and their manifest, feeding a meter, chunking."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from x402_meter.metering import Meter, ResponseInfo, Usage, auto_meter

FIXTURES = Path(__file__).parents[2] / "fixtures"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "usage.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Fixture:
    """One provider response as sent on the wire, and the usage it reports."""

    file: str
    content_type: str
    body: bytes
    request: bytes
    expected: Usage
    output_text: str | None
    cut_before: bytes | None

    def __str__(self) -> str:
        return self.file

    def info(self, content_encoding: str | None = None) -> ResponseInfo:
        return ResponseInfo(200, self.content_type, content_encoding, self.request)


def _fixture(entry: dict[str, Any]) -> Fixture:
    request = entry.get("request")
    cut = entry.get("cut_before")
    return Fixture(
        file=entry["file"],
        content_type=entry["content_type"],
        body=(FIXTURES / entry["file"]).read_bytes(),
        request=(FIXTURES / request).read_bytes() if request else b"",
        expected=Usage(**entry["usage"]),
        output_text=entry.get("output_text"),
        cut_before=cut.encode() if cut else None,
    )


RESPONSES = [_fixture(entry) for entry in MANIFEST["responses"]]
STREAMS_WITH_A_CUT = [fixture for fixture in RESPONSES if fixture.cut_before is not None]
REQUESTS = [(entry["file"], entry["prompt"]) for entry in MANIFEST["requests"]]


def metered(meter: Meter, *chunks: bytes) -> Usage:
    for chunk in chunks:
        meter.feed(chunk)
    return meter.finish()


def meter_fixture(fixture: Fixture, *chunks: bytes, content_encoding: str | None = None) -> Usage:
    return metered(auto_meter(fixture.info(content_encoding)), *chunks)


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[start:end] for start, end in pairwise(bounds)]


def one_byte_chunks(data: bytes) -> list[bytes]:
    return [data[index : index + 1] for index in range(len(data))]
