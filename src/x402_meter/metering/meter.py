"""The meter: an encoded body in, a :class:`Usage` out.

bytes -> (inflate, if the app compressed) -> events (SSE, NDJSON, JSON values or plain text,
by content type) -> a provider's usage extractor (fixed, or recognised from the first events)
-> at the end, the provider's counts, or estimates for the side it did not report: the output
from the text the events carried, the input from the request body.
"""

from __future__ import annotations

import codecs
import logging
import math
from collections.abc import Callable
from typing import Any, Final, Literal, Protocol

from x402_meter.metering.base import ResponseInfo, Usage, UsageSource
from x402_meter.metering.decompress import SUPPORTED_ENCODINGS, Decompressor
from x402_meter.metering.extractor import (
    PlainText,
    UnknownFormat,
    UsageExtractor,
    decode,
)
from x402_meter.metering.json_values import JSONValuesReader
from x402_meter.metering.ndjson import NDJSONReader
from x402_meter.metering.prompt import prompt_text
from x402_meter.metering.sse import SSEParser
from x402_meter.metering.sse_runs import MAX_CARRY, SSEChunkRuns
from x402_meter.metering.tokenizer import (
    BYTES_PER_TOKEN,
    DEFAULT_ENCODING,
    ENCODINGS,
    TokenTally,
    estimate_tokens,
)

logger = logging.getLogger("x402_meter.metering")

Recogniser = Callable[[dict[str, Any]], type[UsageExtractor] | None]
"""Names the extractor for a response from one of its decoded JSON events, if it can."""

DEFER_LIMIT: Final = 4 * 1024 * 1024
"""Bytes of a stream held unread at most, waiting for a usage report (see ``_defer``)."""

_FIRST_LOOK_FROM: Final = 8 * 1024
"""A first batch this long is parsed only up to ``_FIRST_LOOK`` (and its event's end)."""
_FIRST_LOOK: Final = 1024

DETECT_LIMIT: Final = 16
"""Events looked at to recognise the provider before counting the body as unknown JSON."""

BodyFormat = Literal["sse", "ndjson", "json", "text", "opaque"]

NDJSON_TYPES: Final = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonl",
        "application/jsonlines",
        "application/x-jsonlines",
    }
)


def body_format(content_type: str) -> BodyFormat:
    """How a body of this (lower-cased, parameter-less) media type is read."""
    if content_type == "text/event-stream":
        return "sse"
    if content_type in NDJSON_TYPES:
        return "ndjson"
    if content_type == "application/json" or content_type.endswith("+json"):
        return "json"
    if content_type.startswith("text/"):
        return "text"
    return "opaque"


class _Events(Protocol):
    """Turns body bytes into the text of each event."""

    @property
    def dropped(self) -> int:
        """Bytes or characters skipped (over a size bound, or unreadable)."""
        ...

    def feed(self, chunk: bytes) -> list[str]: ...

    def close(self) -> list[str]: ...


class _SSEEvents:
    def __init__(self, accelerate: bool) -> None:
        self.parser = SSEParser(accelerate=accelerate)

    @property
    def dropped(self) -> int:
        return self.parser.dropped

    def feed(self, chunk: bytes) -> list[str]:
        return self.parser.feed_data(chunk)

    def close(self) -> list[str]:
        return self.parser.close_data()


class _TextEvents:
    """A plain-text body: each chunk's text is an event."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.dropped = 0

    def feed(self, chunk: bytes) -> list[str]:
        text = self._decoder.decode(chunk)
        return [text] if text else []

    def close(self) -> list[str]:
        text = self._decoder.decode(b"", final=True)
        return [text] if text else []


class _OpaqueEvents:
    """A body that cannot be read (binary, or compressed in a way not supported): its size."""

    def __init__(self) -> None:
        self.dropped = 0

    def feed(self, chunk: bytes) -> list[str]:
        self.dropped += len(chunk)
        return []

    def close(self) -> list[str]:
        return []


def _events_for(form: BodyFormat, accelerate: bool) -> _Events:
    if form == "sse":
        return _SSEEvents(accelerate)
    if form == "ndjson":
        return NDJSONReader()
    if form == "json":
        return JSONValuesReader()
    if form == "text":
        return _TextEvents()
    return _OpaqueEvents()


class BodyMeter:
    """A :class:`~x402_meter.metering.Meter` for one response body.

    ``extractor`` fixes the provider; otherwise ``recognise`` names it from the first events
    (JSON bodies only). ``encoding`` is the tokenizer encoding the fallback counts with.

    ``accelerate`` turns the fast paths on (the default): runs of chunks of one shape read
    as text, chunk templates, pieces held unread until a count is asked for, events kept in
    bulk, the SSE parser's runs of one-line events. With ``accelerate=False`` only the plain
    readers and extractors run, the reference the fast paths must agree with: the same
    :class:`Usage` for any body and any chunking (``docs/design/metering.md``).
    """

    def __init__(
        self,
        response: ResponseInfo,
        *,
        extractor: UsageExtractor | None = None,
        recognise: Recogniser | None = None,
        encoding: str = DEFAULT_ENCODING,
        accelerate: bool = True,
    ) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; expected one of {sorted(ENCODINGS)}")
        self._request_body = response.request_body
        self._encoding = encoding
        self._accelerate = accelerate
        form = body_format(response.content_type)
        content_encoding = (response.content_encoding or "").strip().lower()
        self._decompressor: Decompressor | None = None
        if content_encoding in SUPPORTED_ENCODINGS:
            self._decompressor = Decompressor(content_encoding)
        elif content_encoding not in ("", "identity"):
            form = "opaque"  # e.g. br or zstd: counted by its (compressed) size
        self._events = _events_for(form, accelerate)
        self._sse = self._events.parser if isinstance(self._events, _SSEEvents) else None
        """The SSE parser the chunk runs hand the stream back to (accelerated SSE only)."""
        if not accelerate:
            self._sse = None  # no runs: every byte goes through the parser
        self._runs: SSEChunkRuns | None = None
        """Reads the runs of chunks of one shape, once the extractor knows that shape."""
        self._tally = TokenTally(encoding)
        """The output so far, counted as its text is taken from the extractor."""
        self._deferred: list[bytes] = []
        """Pieces held unread: no usage report in them, and no count asked for yet."""
        self._deferred_size = 0
        self._markers: tuple[bytes, ...] = ()
        """The extractor's markers, while pieces may be held (see ``_defer``)."""
        if form == "text":
            extractor = PlainText()
        elif form == "opaque":
            extractor = UnknownFormat()
        self._extractor = extractor
        if extractor is not None:
            extractor.tally = self._tally
            extractor.accelerate = accelerate
        self._recognise = recognise
        self._pending: list[tuple[str, Any]] = []
        self._broken = False
        self._prompt_tokens: int | None = None
        self._usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        if self._broken or self._usage is not None:
            return
        try:
            if self._decompressor is None:
                self._read(chunk)
            else:
                for piece in self._decompressor.feed(chunk):
                    self._read(piece)
        except Exception:  # a meter must never break the stream it reads
            logger.exception("meter failed on a chunk; counting what it had")
            self._broken = True

    def finish(self) -> Usage:
        if self._usage is None:
            try:
                self._usage = self._finish()
            except Exception:
                logger.exception("meter failed at the end of the body")
                self._usage = Usage(input_source="estimated", output_source="estimated")
        return self._usage

    def snapshot(self) -> Usage:
        """The count so far, the body not ended: for checkpoints during a long stream.

        An event still incomplete is not counted yet. Not part of the :class:`Meter`
        protocol; never raises, and :meth:`finish` is the same afterwards.
        """
        if self._usage is not None:
            return self._usage
        try:
            self._catch_up()
            extractor = self._extractor
            if extractor is None:  # not recognised yet: what arrived, as unknown JSON
                extractor = UnknownFormat()
                for data, decoded in self._pending:
                    extractor.event(data, decoded)
                return self._count(extractor, TokenTally(self._encoding))
            return self._count(extractor, self._tally)
        except Exception:
            logger.exception("meter failed to take a snapshot")
            return Usage(input_source="estimated", output_source="estimated")

    def _finish(self) -> Usage:
        if not self._broken:
            self._catch_up()
            if self._decompressor is not None:
                for piece in self._decompressor.close():
                    self._read(piece)
            if self._runs is not None:  # the unfinished event it held back
                self._take(self._events.feed(self._runs.carry))
                self._runs = None
            self._take(self._events.close())
        return self._count(self._extractor or self._settle_unknown(), self._tally)

    def _read(self, piece: bytes) -> None:
        """Bytes of the body, inflated: chunk runs read as text while that holds, else
        parsed into events."""
        if not self._accelerate:  # the reference: every byte parsed
            self._take(self._events.feed(piece))
            return
        runs = self._runs
        if runs is None:
            # Looked for before a batch, not after: a short answer never pays for it.
            runs = self._start_runs()
        if runs is None:
            if self._extractor is None and len(piece) >= _FIRST_LOOK_FROM:
                # The first batch of a long one: parse its first events only, to know the
                # provider and the chunks' shape, and read the rest of it as runs already.
                cut = piece.find(b"\n\n", _FIRST_LOOK) + 2
                if cut > 1:
                    self._take(self._events.feed(piece[:cut]))
                    if self._start_runs() is not None:
                        self._read(piece[cut:])
                        return
                    piece = piece[cut:]
            self._take(self._events.feed(piece))
            return
        if b"\r" in piece:  # CR line ends: only the parser reads those
            self._catch_up()
            runs = self._runs
            if runs is not None:
                self._runs = None
                piece = runs.carry + piece
            self._take(self._events.feed(piece))
            return
        if not self._defer(piece):
            self._read_now(piece)

    def _read_now(self, piece: bytes) -> None:
        runs = self._runs
        if runs is None:
            self._take(self._events.feed(piece))
            return
        extractor, sse = self._extractor, self._sse
        assert extractor is not None
        assert sse is not None
        for is_text, text in runs.feed(piece):
            if is_text:
                extractor.keep_text(text)
            else:
                self._take(sse.feed_text(text))
        if len(runs.carry) > MAX_CARRY:  # one event that long: the parser bounds it
            self._runs = None
            self._take(self._events.feed(runs.carry))

    # A provider that reports usage at the end of a stream (OpenAI's include_usage) makes
    # everything counted before the report moot: the report replaces it. So pieces are held
    # unread (up to DEFER_LIMIT) until a count is asked for (a checkpoint, a look at the cap,
    # the end). Then, if the last usage report in them is a whole one (``reports_output``),
    # the events before it are let go unread; otherwise everything held is read in order, as
    # if it had never been held. A short answer that reports its usage is then metered for
    # the cost of reading its report.

    def _defer(self, piece: bytes) -> bool:
        """Hold ``piece`` unread (True) until a count is asked for, while no report was read."""
        extractor = self._extractor
        if not self._markers or extractor is None or extractor.output_tokens is not None:
            return False
        if self._deferred_size + len(piece) > DEFER_LIMIT:
            self._catch_up()
            return False
        self._deferred.append(piece)
        self._deferred_size += len(piece)
        return True

    def _catch_up(self) -> None:
        """Read the pieces held: from the last whole usage report on, if there is one."""
        if not self._deferred:
            return
        pieces, self._deferred, self._deferred_size = self._deferred, [], 0
        report = self._from_last_report(pieces)
        if report is None:
            for piece in pieces:
                self._read_now(piece)
            return
        runs = self._runs
        assert runs is not None
        runs.carry = b""
        self._read_now(report)

    def _from_last_report(self, pieces: list[bytes]) -> bytes | None:
        """The held stream from the event of the last marker on, if that event is a whole
        usage report: what came before it is moot, earlier reports included
        (``final_reports``: a report replaces everything before it).

        A report ends a stream, so only the last two pieces are looked in (the event must
        start and end there, else all is read).
        """
        runs = self._runs
        assert runs is not None
        # What came before them: an event ends there if it ends with a blank line (the runs
        # reader carries nothing unless it is in the middle of one).
        before = pieces[-3][-2:] if len(pieces) > 2 else runs.carry[-2:] or b"\n\n"
        data = before + b"".join(pieces[-2:])
        at = max(map(data.rfind, self._markers))
        if at < 0:
            return None
        begin = data.rfind(b"\n\n", 0, at) + 2
        end = data.find(b"\n\n", at)
        if begin < 2 or end < 0:
            return None
        extractor = self._extractor
        assert extractor is not None
        report = SSEParser().feed_data(data[begin : end + 2])
        if not any(extractor.reports_output(decode(event)) for event in report):
            return None
        return data[begin:]

    def _start_runs(self) -> SSEChunkRuns | None:
        extractor, sse = self._extractor, self._sse
        if extractor is None or sse is None or not sse.idle:
            return None
        template = extractor.chunk_template()
        if template is None:
            return None
        try:
            self._runs = SSEChunkRuns(*template, event=extractor.chunk_event)
        except ValueError:  # a shape the run reader cannot split on (a line end in it)
            return None
        if extractor.final_reports and extractor.markers:
            self._markers = tuple(marker.encode() for marker in extractor.markers)
        return self._runs

    def _count(self, extractor: UsageExtractor, tally: TokenTally) -> Usage:
        extractor.settle()
        output: int
        output_source: UsageSource
        if extractor.output_tokens is not None:
            output, output_source = extractor.output_tokens, "reported"
        else:
            dropped = math.ceil(self._events.dropped / BYTES_PER_TOKEN)
            tally.add(extractor.take_text())
            output = tally.tokens + extractor.dropped_tokens() + dropped
            output_source = "estimated"
        if extractor.input_tokens is not None:
            return Usage(
                extractor.input_tokens,
                output,
                min(extractor.cached_input_tokens, extractor.input_tokens),
                "reported",
                output_source,
                extractor.model,
            )
        if self._prompt_tokens is None:
            self._prompt_tokens = estimate_tokens(prompt_text(self._request_body), self._encoding)
        return Usage(self._prompt_tokens, output, 0, "estimated", output_source, extractor.model)

    def _take(self, events: list[str]) -> None:
        if not events:
            return
        extractor = self._extractor
        if extractor is None:
            events = self._recognise_from(events)
            extractor = self._extractor
            if extractor is None:
                return
        extractor.events(events)

    def _recognise_from(self, events: list[str]) -> list[str]:
        """Decode events until one names the provider; the rest of them are returned."""
        remaining = events
        for index, data in enumerate(remaining):
            decoded = decode(data)
            kind = None
            if isinstance(decoded, dict) and self._recognise is not None:
                kind = self._recognise(decoded)
            self._pending.append((data, decoded))
            if kind is not None or len(self._pending) >= DETECT_LIMIT:
                self._start(kind() if kind is not None else UnknownFormat())
                return remaining[index + 1 :]
        return []

    def _settle_unknown(self) -> UsageExtractor:
        self._start(UnknownFormat())
        assert self._extractor is not None
        return self._extractor

    def _start(self, extractor: UsageExtractor) -> None:
        self._extractor = extractor
        extractor.tally = self._tally
        extractor.accelerate = self._accelerate
        for data, decoded in self._pending:
            extractor.event(data, decoded)
        self._pending.clear()
