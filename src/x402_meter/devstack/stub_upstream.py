"""An offline stand-in for LLM providers' APIs, for the gateway's tests and its local example.

It speaks OpenAI Chat Completions (``/v1/chat/completions``), the Responses API
(``/v1/responses``), embeddings (``/v1/embeddings``), Anthropic Messages (``/v1/messages``)
and Ollama's native chat (``/api/chat``), streaming (SSE, NDJSON) and not, answering with the
stub model's canned answers (``stub_model``); its "tokens" are the answer's pieces, and its
prompt count is a quarter of the prompt's bytes. It reports ``usage`` as each provider does,
unless the model's name contains ``no-usage``. Other words in the model's name ask for
trouble, for the tests: ``fail-500`` (a 500), ``fail-400`` (a 400), ``redirect`` (a 307
to another host), ``stall`` (no answer at all), ``stall-mid`` (a stream that stops after
its first chunk).

With ``api_key`` it wants it as a provider does (``Authorization: Bearer`` or
``x-api-key``) and answers anything else 401 quoting what it got, as some providers do:
a gateway must not pass that on. Every request it gets is recorded (``on_request``): the
tests read what reached the upstream, and what did not.

    python -m x402_meter.devstack.stub_upstream --port 8000 [--api-key-env STUB_KEY]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from x402_meter.devstack.stub_model import (
    complete_chat,
    pieces,
    prompt_tokens,
    stream_chat,
    stub_answer,
)

RecordRequest = Callable[[dict[str, Any]], None]
SSE: Final = "text/event-stream"


def _text_of(content: Any) -> str:
    """A message's text: a string, or the text blocks of a list (Anthropic, Responses)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block.get("text", "")
            for block in content
            if isinstance(block, dict) and isinstance(block.get("text"), str)
        )
    return ""


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation, as plain ``{role, content: str}`` messages, whatever the API."""
    given = body.get("messages")
    if given is None and "input" in body:  # Responses: a string, or a list of items
        given = body["input"]
        if isinstance(given, str):
            given = [{"role": "user", "content": given}]
    if not isinstance(given, list):
        return []
    return [
        {"role": m.get("role"), "content": _text_of(m.get("content"))}
        for m in given
        if isinstance(m, dict)
    ]


class _Turn:
    """One request's answer: the model asked for, the pieces, the counts."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.model = str(body.get("model", "stub"))
        self.messages = _messages(body)
        self.pieces = pieces(stub_answer({"messages": self.messages}))
        self.input_tokens = prompt_tokens(self.messages)
        self.output_tokens = len(self.pieces)
        self.usage = "no-usage" not in self.model
        self.stream = bool(body.get("stream"))

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _sse(event: str | None, data: dict[str, Any]) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(data).encode() + b"\n\n"


async def _stalled_after(first: bytes) -> AsyncIterator[bytes]:
    yield first
    await anyio.sleep_forever()


# -- OpenAI Chat Completions ------------------------------------------------------------------


def chat(turn: _Turn, body: dict[str, Any]) -> Response:
    request = {**body, "model": turn.model, "messages": turn.messages}
    if turn.stream:
        if not turn.usage:
            request.pop("stream_options", None)
        return StreamingResponse(stream_chat(request, turn.pieces), media_type=SSE)
    answer = complete_chat(request, turn.pieces)
    if not turn.usage:
        del answer["usage"]
    return JSONResponse(answer)


# -- OpenAI Responses -------------------------------------------------------------------------


def _response_object(turn: _Turn, status: str, text: str | None) -> dict[str, Any]:
    output = []
    if text is not None:
        output.append(
            {
                "id": "msg_stub",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    answer: dict[str, Any] = {
        "id": "resp_stub",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": turn.model,
        "output": output,
    }
    if turn.usage and status == "completed":
        answer["usage"] = {
            "input_tokens": turn.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": turn.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": turn.input_tokens + turn.output_tokens,
        }
    return answer


_TEXT_PART: Final = {"item_id": "msg_stub", "output_index": 0, "content_index": 0}


async def _responses_events(turn: _Turn) -> AsyncIterator[bytes]:
    number = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal number
        number += 1
        return _sse(kind, {"type": kind, "sequence_number": number, **fields})

    yield event("response.created", response=_response_object(turn, "in_progress", None))
    for piece in turn.pieces:
        yield event("response.output_text.delta", **_TEXT_PART, delta=piece)
    yield event("response.output_text.done", **_TEXT_PART, text=turn.text)
    yield event("response.completed", response=_response_object(turn, "completed", turn.text))


def responses(turn: _Turn, body: dict[str, Any]) -> Response:
    if turn.stream:
        return StreamingResponse(_responses_events(turn), media_type=SSE)
    return JSONResponse(_response_object(turn, "completed", turn.text))


# -- Anthropic Messages -----------------------------------------------------------------------


def _message(turn: _Turn, content: list[dict[str, Any]], output_tokens: int) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": "msg_stub",
        "type": "message",
        "role": "assistant",
        "model": turn.model,
        "content": content,
        "stop_reason": "end_turn" if content else None,
        "stop_sequence": None,
    }
    if turn.usage:
        message["usage"] = {"input_tokens": turn.input_tokens, "output_tokens": output_tokens}
    return message


async def _message_events(turn: _Turn) -> AsyncIterator[bytes]:
    yield _sse("message_start", {"type": "message_start", "message": _message(turn, [], 1)})
    block = {"type": "text", "text": ""}
    yield _sse(
        "content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}
    )
    for piece in turn.pieces:
        delta = {"type": "text_delta", "text": piece}
        yield _sse(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        )
    yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    done: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
    }
    if turn.usage:
        done["usage"] = {"output_tokens": turn.output_tokens}
    yield _sse("message_delta", done)
    yield _sse("message_stop", {"type": "message_stop"})


def messages(turn: _Turn, body: dict[str, Any]) -> Response:
    if turn.stream:
        return StreamingResponse(_message_events(turn), media_type=SSE)
    content = [{"type": "text", "text": turn.text}]
    return JSONResponse(_message(turn, content, turn.output_tokens))


# -- embeddings and Ollama --------------------------------------------------------------------


def embeddings(turn: _Turn, body: dict[str, Any]) -> Response:
    given = body.get("input")
    inputs = given if isinstance(given, list) else [given]
    tokens = prompt_tokens([{"content": str(item)} for item in inputs])
    answer: dict[str, Any] = {
        "object": "list",
        "model": turn.model,
        "data": [
            {"object": "embedding", "index": i, "embedding": [0.0, 0.5, 1.0]}
            for i in range(len(inputs))
        ],
    }
    if turn.usage:
        answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return JSONResponse(answer)


def _ollama_line(turn: _Turn, content: str, done: bool) -> bytes:
    line: dict[str, Any] = {
        "model": turn.model,
        "created_at": "2025-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": content},
        "done": done,
    }
    if done:
        line["done_reason"] = "stop"
        if turn.usage:
            line["prompt_eval_count"] = turn.input_tokens
            line["eval_count"] = turn.output_tokens
    return json.dumps(line).encode() + b"\n"


async def _ollama_lines(turn: _Turn) -> AsyncIterator[bytes]:
    for piece in turn.pieces:
        yield _ollama_line(turn, piece, False)
    yield _ollama_line(turn, "", True)


def ollama_chat(turn: _Turn, body: dict[str, Any]) -> Response:
    if body.get("stream", True):  # Ollama streams unless told not to
        return StreamingResponse(_ollama_lines(turn), media_type="application/x-ndjson")
    return Response(_ollama_line(turn, turn.text, True), media_type="application/json")


APIS: Final = {
    "/v1/chat/completions": chat,
    "/v1/responses": responses,
    "/v1/messages": messages,
    "/v1/embeddings": embeddings,
    "/api/chat": ollama_chat,
}


def create_stub_upstream(
    *, api_key: str | None = None, on_request: RecordRequest | None = None
) -> Starlette:
    """The stub providers' app; ``on_request`` is told of every request it gets."""

    async def record(request: Request) -> bytes:
        body = await request.body()
        if on_request is not None:
            on_request(
                {
                    "method": request.method,
                    "path": request.url.path,
                    "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
                    "query": request.url.query,
                    "headers": [
                        [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw
                    ],
                    "body": body.decode("utf-8", "replace"),
                }
            )
        return body

    def authorized(request: Request) -> str | None:
        """None if the key is right; else what was presented."""
        if api_key is None:
            return None
        presented = request.headers.get("x-api-key") or request.headers.get("authorization", "")
        presented = presented.removeprefix("Bearer ")
        return None if presented == api_key else presented

    async def endpoint(request: Request) -> Response:
        raw = await record(request)
        presented = authorized(request)
        if presented is not None:
            error = {"error": {"message": f"Incorrect API key provided: {presented}"}}
            return JSONResponse(error, status_code=401)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": {"message": "send a JSON object"}}, status_code=400)
        turn = _Turn(body)
        for status in (500, 400):
            if f"fail-{status}" in turn.model:
                message = f"the stub failed on purpose ({status})"
                return JSONResponse({"error": {"message": message}}, status_code=status)
        if "redirect" in turn.model:
            return RedirectResponse("http://elsewhere.invalid/v1/steal", status_code=307)
        if "stall-mid" in turn.model:
            first = _sse(None, {"choices": [{"index": 0, "delta": {"content": "x"}}]})
            return StreamingResponse(_stalled_after(first), media_type=SSE)
        if "stall" in turn.model:
            await anyio.sleep_forever()
        return APIS[request.url.path](turn, body)

    async def anything_else(request: Request) -> Response:
        await record(request)
        return JSONResponse({"error": {"message": "not found"}}, status_code=404)

    routes = [Route(path, endpoint, methods=["POST"]) for path in APIS]
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    routes.append(Route("/{rest:path}", anything_else, methods=methods))
    return Starlette(routes=routes)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the stub with uvicorn; with ``--record FILE``, one JSON line per request."""
    import uvicorn

    parser = argparse.ArgumentParser(description="offline stand-in for LLM providers' APIs")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key-env", help="the variable holding the key it wants")
    parser.add_argument("--record", help="append every request it gets to this file (JSONL)")
    args = parser.parse_args(argv)
    key = os.environ[args.api_key_env] if args.api_key_env else None
    on_request = None
    if args.record:
        path = args.record

        def on_request(entry: dict[str, Any]) -> None:
            with open(path, "a", encoding="utf-8") as file:  # noqa: PTH123 - one line, flushed
                file.write(json.dumps(entry) + "\n")

    app = create_stub_upstream(api_key=key, on_request=on_request)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)


if __name__ == "__main__":
    main()
