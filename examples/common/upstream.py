"""Where the examples' answers come from: the offline stub model, or any OpenAI-compatible API.

Both give the body as an async iterator of bytes, so the app streams it out as it arrives
(the metering middleware counts the tokens on the way): nothing is ever buffered.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx

from x402_meter.devstack.stub_model import ANSWER, complete_chat, pieces, stream_chat

PAYMENT_ANSWER: Final = (
    "This answer is paid with x402: your client answered the server's 402 by signing a "
    "payment authorization, the server streamed the answer while counting its tokens, and "
    "once the stream closed the facilitator settled the price on chain. The receipt holds "
    "the tokens, the amount and the transaction."
)
GREETING: Final = (
    "Hello! I am an offline stub model behind x402-meter: every token I send is counted, "
    "and you pay for exactly those, in test USDC on a local chain."
)
_TOPICS: Final = (
    (frozenset({"hello", "hi", "hey"}), GREETING),
    (frozenset({"pay", "paid", "payment", "settle", "settled", "cost", "charge", "price"}), ""),
)


def stub_answer(request: dict[str, Any]) -> str:
    """The stub's canned answer to the last user message: greeting, payment, or x402 itself."""
    messages = request.get("messages")
    last = ""
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1].get("content") if users else None
        last = content if isinstance(content, str) else ""
    words = set(re.findall(r"[a-z]+", last.lower()))
    for keywords, answer in _TOPICS:
        if words & keywords:
            return answer or PAYMENT_ANSWER
    return ANSWER


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status_code: int
    media_type: str
    body: AsyncIterator[bytes]


class Upstream(Protocol):
    """An OpenAI-compatible ``POST /chat/completions``, answered as a stream of bytes."""

    async def chat_completions(self, body: bytes) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


async def _one(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk


class StubUpstream:
    """The built-in offline stub model (``x402_meter.devstack.stub_model``)."""

    async def chat_completions(self, body: bytes) -> UpstreamResponse:
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            error = {"error": {"message": "the body must be a JSON object", "type": "invalid"}}
            return UpstreamResponse(400, "application/json", _one(json.dumps(error).encode()))
        answer = pieces(stub_answer(request))
        if request.get("stream"):
            return UpstreamResponse(200, "text/event-stream", stream_chat(request, answer))
        completion = json.dumps(complete_chat(request, answer)).encode()
        return UpstreamResponse(200, "application/json", _one(completion))

    async def aclose(self) -> None:
        return None


class OpenAICompatibleUpstream:
    """Any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, ...), streamed through
    with httpx: each chunk goes out as it comes in."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 300.0) -> None:
        headers = {"accept-encoding": "identity"}  # the bytes pass through as they are
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/", headers=headers, timeout=timeout
        )

    async def chat_completions(self, body: bytes) -> UpstreamResponse:
        request = self._client.build_request(
            "POST", "chat/completions", content=body, headers={"content-type": "application/json"}
        )
        response = await self._client.send(request, stream=True)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()

        media_type = response.headers.get("content-type", "application/json")
        return UpstreamResponse(response.status_code, media_type, relay())

    async def aclose(self) -> None:
        await self._client.aclose()


def upstream_from(base_url: str | None, api_key: str | None = None) -> Upstream:
    """The upstream ``UPSTREAM_BASE_URL`` names, or the stub model when it is unset."""
    if base_url:
        return OpenAICompatibleUpstream(base_url, api_key)
    return StubUpstream()
