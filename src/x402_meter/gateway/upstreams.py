"""The kinds of upstream the gateway speaks to: their paths, auth header and protocol headers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

UpstreamKind = Literal["openai", "anthropic", "ollama"]

COMMON_FORWARDED: Final = frozenset({b"content-type", b"accept"})
"""Request headers every upstream gets from the caller; everything else is dropped."""

RESPONSE_HEADERS: Final = frozenset(
    {b"content-type", b"retry-after", b"x-request-id", b"request-id"}
)
"""Answer headers the caller gets from the upstream (its organisation, project, rate limits
and cookies are the seller's business, not the caller's)."""


@dataclass(frozen=True, slots=True)
class UpstreamKindInfo:
    paths: tuple[str, ...]
    """The paths exposed when the config names none."""
    auth_header: bytes
    auth_prefix: str
    forward_headers: frozenset[bytes]


KINDS: Final[dict[str, UpstreamKindInfo]] = {
    # OpenAI and every OpenAI-compatible server: vLLM, llama.cpp, LiteLLM, Ollama's /v1.
    "openai": UpstreamKindInfo(
        ("/v1/chat/completions", "/v1/responses", "/v1/embeddings"),
        b"authorization",
        "Bearer ",
        COMMON_FORWARDED,
    ),
    "anthropic": UpstreamKindInfo(
        ("/v1/messages",),
        b"x-api-key",
        "",
        COMMON_FORWARDED | {b"anthropic-version", b"anthropic-beta"},
    ),
    # Ollama's native API; its OpenAI-compatible /v1 is kind "openai".
    "ollama": UpstreamKindInfo(
        ("/api/chat", "/api/generate", "/api/embed"),
        b"authorization",
        "Bearer ",
        COMMON_FORWARDED,
    ),
}
