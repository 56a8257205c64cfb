"""Where the examples' answers come from: the offline stub model, or any OpenAI-compatible API.

Both give the body as an async iterator of bytes, so the app streams it out as it arrives
(the metering middleware counts the tokens on the way): nothing is ever buffered.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import httpx

from x402_meter.devstack.stub_model import PAYMENT_ANSWER as PAYMENT_ANSWER
from x402_meter.devstack.stub_model import complete_chat, pieces, stream_chat
from x402_meter.devstack.stub_model import stub_answer as stub_answer


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
