"""Attack tests, issue 13 finding 1: the meter's decision agrees with the router.

Each test sends unpaid requests to a real uvicorn server, in the shapes that reached a
metered endpoint for free on main (875f48c): under ``--root-path``, under a ``Mount``,
with the slash variants a wrapped Litestar app normalises, ``HEAD`` for a ``GET`` route, and
an app with a ``Host`` route. The defended outcome is the same each time: a 402, no byte of
the model's answer, and the endpoint never ran.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from litestar import Litestar, post
from litestar.response import Stream
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Host, Mount, Route, Router

from tests.apps import meter_options, sse_body
from tests.fault_harness import uvicorn_server
from tests.test_middleware_frameworks import CHAT, pay_and_stream
from x402_meter import X402Meter, metered
from x402_meter.devstack import LocalStack
from x402_meter.devstack.asgi_server import serving

MODEL_BYTES = b"chat.completion.chunk"  # in every chunk of an answer, ours and the stub's


class Runs:
    """Counts the runs of a metered endpoint: the ground truth of "was it served"."""

    def __init__(self) -> None:
        self.count = 0

    def answer(self) -> AsyncIterator[bytes]:
        self.count += 1
        return sse_body()


def assert_challenged(response: httpx.Response) -> None:
    assert response.status_code == 402, (response.request.url, response.status_code)
    assert MODEL_BYTES not in response.content
    assert response.json()["reason"] == "payment_required"


def test_under_uvicorn_root_path_unpaid_requests_are_challenged(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """``uvicorn --root-path /api``: uvicorn puts ``/api`` in front of ``path``; the router
    routes below it. Failed on main (875f48c): 200 with the stub model's whole answer."""
    with (
        uvicorn_server(
            x402_local_stack,
            "memory://",
            tmp_path / "uvicorn.log",
            uvicorn_args=["--root-path", "/api"],
        ) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        for path in ("/v1/chat/completions", "/v1/chat/completions/", "//v1/chat/completions"):
            assert_challenged(client.post(server.url + path, json=CHAT))  # "//v1" is no host
        assert client.get("/runs").json() == {"runs": 0}


@pytest.mark.anyio
async def test_under_a_starlette_mount_unpaid_requests_are_challenged(
    x402_local_stack: LocalStack,
) -> None:
    """A metered app mounted with ``Mount("/llm", app)``: the mount keeps ``/llm`` in
    ``path`` and routes below it. Failed on main (875f48c): 200 with the model's answer.
    A paid request through the mount is still served, and its receipt found."""
    runs = Runs()
    inner = FastAPI()

    @inner.post("/v1/chat/completions")
    async def chat() -> StreamingResponse:
        return StreamingResponse(runs.answer(), media_type="text/event-stream")

    inner.add_middleware(X402Meter, **meter_options(x402_local_stack))
    app = Starlette(routes=[Mount("/llm", app=inner)])
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as client:
        for path in (
            "/llm/v1/chat/completions",
            "/llm/v1/chat/completions/",
            "/llm//v1/chat/completions",
        ):
            assert_challenged(await client.post(base + path, json=CHAT))
        assert runs.count == 0
        _, receipt = await pay_and_stream(x402_local_stack, 4, f"{base}/llm/v1/chat/completions")
    assert runs.count == 1
    assert int(receipt["amount"]) > 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path", ["/v1/chat/completions/", "//v1/chat/completions", "/v1//chat/completions"]
)
async def test_a_wrapped_litestar_app_challenges_the_paths_it_normalises(
    x402_local_stack: LocalStack, path: str
) -> None:
    """``X402Meter(Litestar(...))``: Litestar collapses slashes and drops the trailing one
    before routing. Failed on main (875f48c): each of these was a 200 with the answer."""
    runs = Runs()

    @post("/v1/chat/completions", status_code=200)
    async def chat() -> Stream:
        return Stream(runs.answer(), media_type="text/event-stream")

    app = X402Meter(Litestar(route_handlers=[chat]), **meter_options(x402_local_stack))
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as client:
        assert_challenged(await client.post(base + path, json=CHAT))  # "//v1" is no host
    assert runs.count == 0


@pytest.mark.anyio
async def test_head_on_a_metered_get_route_is_challenged(x402_local_stack: LocalStack) -> None:
    """``routes=["GET /v1/answer"]``: Starlette answers ``HEAD`` with the ``GET`` endpoint.
    Failed on main (875f48c): the endpoint ran, unpaid (200, the body dropped by HEAD)."""
    runs = Runs()

    async def answer(request: Request) -> StreamingResponse:
        return StreamingResponse(runs.answer(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/answer", answer, methods=["GET"])])
    app.add_middleware(X402Meter, **meter_options(x402_local_stack, routes=["GET /v1/answer"]))
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as client:
        response = await client.head("/v1/answer")
        assert response.status_code == 402
        assert_challenged(await client.get("/v1/answer"))
    assert runs.count == 0


@pytest.mark.anyio
async def test_an_app_with_host_routes_is_challenged_per_host(x402_local_stack: LocalStack) -> None:
    """A ``Host("api.example.com", ...)`` route with a ``@metered`` endpoint, another host's
    free endpoint at the same path. Failed on main (875f48c): 500 on every request (the
    router lookup had no headers). The lookup cache tells the hosts apart: the free host's
    answer, asked first, is not the metered host's."""
    runs = Runs()

    @metered(max_tokens=512)
    async def answer(request: Request) -> StreamingResponse:
        return StreamingResponse(runs.answer(), media_type="text/event-stream")

    async def free(request: Request) -> PlainTextResponse:
        return PlainTextResponse("free")

    app = Starlette(
        routes=[
            Host("free.example.com", app=Router([Route("/v1/answer", free, methods=["POST"])])),
            Host("api.example.com", app=Router([Route("/v1/answer", answer, methods=["POST"])])),
        ]
    )
    app.add_middleware(X402Meter, **meter_options(x402_local_stack, routes=None))
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as client:
        freely = await client.post("/v1/answer", json=CHAT, headers={"host": "free.example.com"})
        assert (freely.status_code, freely.text) == (200, "free")
        assert_challenged(
            await client.post("/v1/answer", json=CHAT, headers={"host": "api.example.com"})
        )
        elsewhere = await client.post("/v1/answer", json=CHAT, headers={"host": "other.example"})
        assert elsewhere.status_code == 404
    assert runs.count == 0
