"""OpenAI chat streams for the tests of the chunk-run fast path (sse_runs, BodyMeter).

Streams are made of SSE fragments: chunks of one template shape (the one a meter learns
from the stream) with random contents, plain or escaped or making the chunk something else,
among the events a real stream holds (role, finish and usage chunks, ``[DONE]``) and the SSE
a run reader must leave to the parser (comments, ``event:`` lines, multi-line data, blank
lines, chunks of other shapes).
"""

from __future__ import annotations

import json
from typing import Any, Final

from hypothesis import strategies as st

from tests.unit.metering.test_fast_paths import SHAPES
from x402_meter.metering.extractor import decode, field
from x402_meter.metering.openai_chat import OpenAIChatUsage
from x402_meter.metering.sse import SSEParser

BENCH_SHAPE: Final = (
    '{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk",'
    '"created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default",'
    '"system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{"content":"%s"},'
    '"logprobs":null,"finish_reason":null}],"usage":null}'
)
"""The chunk OpenAI streams for each token (as bench/sse_server.py streams it, its content a
hole): written out here, so that no test imports the benchmarks."""
assert "%s" in BENCH_SHAPE

TEMPLATE_SHAPES: Final = [
    BENCH_SHAPE,
    SHAPES[0],
    '{"choices":[{"delta":{"content":"%s"}}]}',
    '{"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}],"model":"m",'
    '"object":"chat.completion.chunk"}',
]
"""Shapes a meter reads runs of: one plain ``"content"`` string is all their text."""

OTHER_SHAPES: Final = SHAPES[1:]
"""Chunk shapes with other or more text (or an escaped key): never a template."""

MODEL: Final = "m"
ROLE: Final = (
    '{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
    '"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}'
)
FINISH: Final = (
    '{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
    '"delta":{},"finish_reason":"stop"}],"usage":null}'
)
USAGE_WITHOUT_MODEL: Final = '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}'
USAGE_WITH_MODEL: Final = (
    '{"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}'
)
CONTINUOUS_USAGE_SHAPE: Final = (
    '{"choices":[{"delta":{"content":"%s"}}],"usage":{"prompt_tokens":3,"completion_tokens":%d}}'
)
"""vLLM's continuous_usage_stats: running totals in every chunk (a marker in each)."""

GARBLED: Final = "¤"
"""A plain character the byte-level tests replace with invalid UTF-8."""

PLAIN_PIECES: Final = [
    *"ab Z09 ,.:{}[]'/",
    "é",
    "日本",
    "😀",
    "\u00a0",
    "\u2028",
    "\x7f",
    "\ufffd",
    "data: ",
    "content",
    " token",
    GARBLED,
]
"""Free of quotes, backslashes and controls: a chunk's text as it is written."""
ESCAPED_PIECES: Final = [
    "\\n",
    '\\"',
    "\\\\",
    "\\u00e9",
    "\\ud83d\\ude00",
    "\\ud83d",
    "\\/",
    "\\t",
    "\\u0000",
    '\\"content\\":\\"',
    "\\r\\n",
]
"""Valid JSON escapes: the chunk is still of the template's shape, its text decoded."""
BREAKING_PIECES: Final = [
    '"',
    "\\",
    "\\x",
    "\x01",
    "\x00",
    "\t",
    "\n",
    "\n\n",
    '"content":"',
    '"}',
    '","content":"',
]
"""What ends the string early, is not JSON, or splits the event: another event entirely."""


def content(*alphabets: list[str], max_size: int = 6) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from([p for a in alphabets for p in a]), max_size=max_size).map(
        "".join
    )


PLAIN: Final = content(PLAIN_PIECES) | st.text(
    st.characters(exclude_characters='"\\', exclude_categories=("Cc", "Cs")), max_size=8
)
ESCAPED: Final = content(PLAIN_PIECES, ESCAPED_PIECES)
ANY_CONTENT: Final = content(PLAIN_PIECES, ESCAPED_PIECES, BREAKING_PIECES)


def data(json_text: str) -> str:
    return "data: " + json_text + "\n\n"


def fill(shape: str, text: str) -> str:
    return shape.replace("%s", text)


def template_of(shape: str) -> tuple[str, str]:
    """(prefix, suffix) as a meter's extractor finds them from one chunk of ``shape``."""
    extractor = OpenAIChatUsage()
    extractor.event(fill(shape, "first"))
    template = extractor.chunk_template()
    assert template is not None, shape
    return template


def model_of(shape: str) -> str:
    """The model chunks of ``shape`` name (``m`` if they name none)."""
    model = field(decode(fill(shape, "x")), "model")
    return model if isinstance(model, str) else MODEL


def named(event: str, shape: str) -> str:
    """``event`` naming the model chunks of ``shape`` name: one stream, one model."""
    return event.replace(
        '"model":"m"', json.dumps({"model": model_of(shape)}, separators=(",", ":"))[1:-1]
    )


def fragments(shape: str, contents: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """SSE text of one event, or of a part of one (a line), for streams of ``shape``."""
    prefix, suffix = template_of(shape)
    role, finish = named(ROLE, shape), named(FINISH, shape)
    return st.one_of(
        # chunks of the template's shape, the most common (listed three times)
        *[contents.map(lambda text: data(fill(shape, text)))] * 3,
        # the same, not ended: its data goes on in the next line(s)
        contents.map(lambda text: "data: " + fill(shape, text) + "\n"),
        # other shapes, other events
        st.tuples(st.sampled_from(OTHER_SHAPES), contents).map(lambda c: data(fill(*c))),
        st.sampled_from([data(role), data(finish), data(USAGE_WITHOUT_MODEL)]),
        st.sampled_from(
            [
                ": ping\n",
                ": ping\n\n",
                "\n",
                "data: [DONE]\n\n",
                "event: delta\n",
                "id: 7\n",
                "retry: 1000\n",
                "bogus field\n",
                "data: line one\ndata: line two\n\n",
                'data: {"x":{"content":"y"}}\n\n',
                ': "content":"\n',
                "data:\n\n",
                "data\n\n",
            ]
        ),
        # almost the template: the parser's business
        contents.map(lambda text: "data:" + fill(shape, text) + "\n\n"),
        contents.map(lambda text: "data:  " + fill(shape, text) + "\n\n"),
        contents.map(lambda text: "data: " + fill(shape, text) + " \n\n"),
        contents.map(lambda text: "data: " + prefix + text + "\n\n"),
        contents.map(lambda text: "data: " + prefix + text + suffix[:-1] + "\n\n"),
        contents.map(lambda text: "data: x" + prefix + text + suffix + "\n\n"),
    )


def text_of(data_text: str) -> str:
    """The generated text of one event's data, decoded as the plain path decodes it."""
    return OpenAIChatUsage().text(decode(data_text))


def events_of(sse: bytes) -> list[str]:
    """The data of each whole event in ``sse`` (one parser, no close)."""
    return SSEParser().feed_data(sse)


def json_string(body: str) -> str | None:
    try:
        value: Any = json.loads('"' + body + '"')
    except ValueError:
        return None
    return value if isinstance(value, str) else None
