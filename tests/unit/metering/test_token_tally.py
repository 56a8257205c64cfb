"""TokenTally counts a growing text, part by part, exactly as counting it at once does.

It counts each part up to a space that follows a character that is not whitespace, and
carries the rest; the claim is that no pre-token of o200k_base or cl100k_base runs across
such a space. Checked on random texts (Unicode whitespace, CJK, emoji, lone surrogates) cut
anywhere, after each part, with the tokenizer and without it (UTF-8 bytes / 4).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x402_meter.metering import tokenizer
from x402_meter.metering.tokenizer import ENCODINGS, TokenTally, estimate_tokens

NAMES = sorted(ENCODINGS)

SPACES = [" ", "  ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x85"]
SPACES += ["\u00a0", "\u1680", "\u2000", "\u2009", "\u200a", "\u2028", "\u2029", "\u202f"]
SPACES += ["\u205f", "\u3000", "\u200b", "\u180e", "\ufeff"]  # the last three: not whitespace
"""Every kind of whitespace Python or the tokenizers' regexes know, and a few that are not."""
WORDS = ["a", "Z", "word", "I'm", "it's", "'ll", "1", "123456", "3.14", ".", "!?", "...", "-"]
WORDS += ["é", "naïve", "Größe", "日本語", "한국어", "العربية", "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷"]
WORDS += ["\u0301", "<|endoftext|>", "\ud800", "\udfff", "\ud83d", "\ude00", "\ufffd", "/"]
"""Words, numbers, punctuation, marks, CJK, emoji, special-token text, lone surrogates."""

PIECES = st.sampled_from(SPACES) | st.sampled_from(WORDS)
TEXTS = st.one_of(
    st.lists(PIECES, max_size=40).map("".join),
    st.text(st.sampled_from([c for c in [*SPACES, *WORDS, *"aé日😀'"] if len(c) == 1])),
    st.text(st.characters(exclude_categories=()), max_size=40),  # surrogates included
    st.text(st.characters(categories=["Zs", "Cc", "Cs", "Lo", "Mn", "So"]), max_size=40),
)


def parts_of(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted({cut % (len(text) + 1) for cut in cuts}), len(text)]
    return [text[start:end] for start, end in pairwise(bounds)]


def assert_counts_as_a_whole(text: str, cuts: list[int], encoding: str) -> None:
    tally = TokenTally(encoding)
    so_far = ""
    for part in parts_of(text, cuts):
        tally.add(part)
        so_far += part
        assert tally.tokens == estimate_tokens(so_far, encoding), (so_far, part)
    assert so_far == text
    assert tally.tokens == estimate_tokens(text, encoding)


@settings(max_examples=1000, deadline=None)
@given(
    encoding=st.sampled_from(NAMES),
    text=TEXTS,
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_a_tally_of_parts_is_the_count_of_the_whole(
    encoding: str, text: str, cuts: list[int]
) -> None:
    assert_counts_as_a_whole(text, cuts, encoding)


@settings(max_examples=100, deadline=None)
@given(
    encoding=st.sampled_from(NAMES),
    words=st.lists(st.sampled_from(WORDS) | st.text(max_size=6), max_size=30),
    separators=st.lists(st.sampled_from(SPACES), min_size=1),
)
def test_a_tally_of_a_text_streamed_word_by_word_is_the_count_of_the_whole(
    encoding: str, words: list[str], separators: list[str]
) -> None:
    # as a model streams: each part a word with the space before it, or a separator run
    parts = [separators[i % len(separators)] + word for i, word in enumerate(words)]
    tally = TokenTally(encoding)
    for part in parts:
        tally.add(part)
    assert tally.tokens == estimate_tokens("".join(parts), encoding)


@pytest.mark.parametrize("encoding", NAMES)
@pytest.mark.parametrize("space", SPACES, ids=repr)
def test_a_space_after_any_kind_of_whitespace_or_word_cuts_right(encoding: str, space: str) -> None:
    for text in (
        f"x{space} y",
        f"x {space}y",
        f"{space} {space} ",
        f"1{space} 2 ",
        f"it's{space} 's ",
        f"😀{space} 日本 ",
        f"a {space} \n b",
    ):
        for cut in range(len(text) + 1):
            assert_counts_as_a_whole(text, [cut], encoding)
        assert_counts_as_a_whole(text, list(range(len(text))), encoding)  # one char at a time


def test_the_whitespace_the_cut_trusts_is_the_tokenizers_whitespace() -> None:
    # The cut is made before a space whose previous character is not str.isspace(); the
    # regexes' \s is Unicode White_Space. No character is \s and not str.isspace(), or a
    # whitespace run could reach across a cut.
    regex = pytest.importorskip("regex")
    whitespace = regex.compile(r"\s")
    missed = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        if not chr(code).isspace() and whitespace.match(chr(code))
    ]
    assert missed == []


@pytest.fixture
def no_tokenizer() -> Iterator[None]:
    """As if the tokenizer extra were not installed: counts are UTF-8 bytes / 4."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokenizer, "_loaded", {})
        patch.setattr(tokenizer, "find_vocabulary", lambda encoding: None)
        yield


@pytest.mark.usefixtures("no_tokenizer")
@pytest.mark.parametrize("encoding", NAMES)
def test_without_a_tokenizer_a_tally_is_the_bytes_of_the_whole_over_four(encoding: str) -> None:
    assert not tokenizer.tokenizer_available(encoding)

    @settings(max_examples=200, deadline=None)
    @given(text=TEXTS, cuts=st.lists(st.integers(0, 10_000), max_size=12))
    def check(text: str, cuts: list[int]) -> None:
        assert_counts_as_a_whole(text, cuts, encoding)
        expected = -(-len(text.encode("utf-8", "surrogatepass")) // 4)
        assert estimate_tokens(text, encoding) == expected

    check()
