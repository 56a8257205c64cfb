"""Property, issue 13 finding 1: no path shape reaches a metered endpoint unpaid.

The ground truth is the app itself. Each app is built twice, from one factory: bare, and
behind the meter. A random unpaid request (methods incl. ``HEAD`` and lower case; paths with
doubled and trailing slashes, ``.`` and ``..``, percent-encodings, other case, prefixes;
Host headers) goes to both, as uvicorn would build its scope (``path`` percent-decoded,
``root_path`` in front of it under ``--root-path``). Whenever the bare app runs a metered
endpoint, the metered app must answer 402; and the metered app never runs one, nor
answers 500 where the bare app did not.

Apps: Starlette (table, ``@metered``, a ``Host`` route, a ``Mount``), FastAPI under
``root_path`` and behind a ``Mount``, Litestar with ``X402MeterPlugin`` and wrapped in
``X402Meter(app)``. The 402's offer comes from the real local facilitator. All apps are
built once per module, in one event loop (a blocking portal), not once per example.

On main (875f48c) it fails at once: ``POST /v1/chat/completions/`` runs the wrapped
Litestar app's endpoint unpaid (and so do the ``root_path``, ``Mount`` and ``HEAD`` cases).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from litestar import Litestar, get, post
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route, Router

from tests.apps import meter_options
from x402_meter import X402Meter, metered
from x402_meter.devstack import LocalStack
from x402_meter.integrations.litestar import X402MeterPlugin

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
TABLE = ["POST /v1/chat/completions", "GET /v1/models/{id}"]


@dataclass
class Runs:
    """Which endpoints ran. Endpoints named ``metered*`` are the metered ones."""

    names: list[str] = field(default_factory=list)

    def hit(self, name: str) -> str:
        self.names.append(name)
        return name

    def metered(self) -> list[str]:
        return [name for name in self.names if name.startswith("metered")]


@dataclass
class Twin:
    """One app, bare and behind the meter, each with its own record of endpoint runs."""

    bare: ASGIApp
    bare_runs: Runs
    metered: ASGIApp
    metered_runs: Runs
    root_path: str = ""
    mount: str = ""


Factory = Callable[[Runs, dict[str, Any] | None], ASGIApp]


def starlette_app(runs: Runs, meter: dict[str, Any] | None) -> ASGIApp:
    def endpoint(name: str) -> Callable[[Request], Awaitable[PlainTextResponse]]:
        async def answer(request: Request) -> PlainTextResponse:
            return PlainTextResponse(runs.hit(name))

        return answer

    routes = [
        Route("/v1/chat/completions", endpoint("metered-table"), methods=["POST"]),
        Route("/v1/models/{id}", endpoint("metered-get"), methods=["GET"]),
        Route("/v1/answer", metered(max_tokens=64)(endpoint("metered-marked")), methods=["POST"]),
        Route("/free", endpoint("free")),
        Mount(
            "/sub",
            routes=[Route("/v1/chat/completions", endpoint("metered-mounted"), methods=["POST"])],
        ),
        Host(  # takes every other path on that host
            "api.example.com",
            app=Router([Route("/h/answer", metered()(endpoint("metered-host")), methods=["POST"])]),
        ),
    ]
    app = Starlette(routes=routes)
    if meter is not None:
        app.add_middleware(X402Meter, **meter)
    return app


def fastapi_app(runs: Runs, meter: dict[str, Any] | None) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> str:
        return runs.hit("metered-table")

    @app.post("/v1/answer")
    @metered(max_tokens=64)
    async def answer() -> str:
        return runs.hit("metered-marked")

    @app.get("/free")
    async def free() -> str:
        return runs.hit("free")

    if meter is not None:
        app.add_middleware(X402Meter, **meter)
    return app


def fastapi_mounted(runs: Runs, meter: dict[str, Any] | None) -> ASGIApp:
    outer = FastAPI()

    @outer.get("/free")
    async def free() -> str:
        return runs.hit("free")

    outer.mount("/llm", fastapi_app(runs, meter))
    return outer


def litestar_handlers(runs: Runs) -> list[Any]:
    @post("/v1/chat/completions", status_code=200, sync_to_thread=False)
    def chat() -> str:
        return runs.hit("metered-table")

    @post("/v1/answer", status_code=200, sync_to_thread=False)
    @metered(max_tokens=64)
    def answer() -> str:
        return runs.hit("metered-marked")

    @get("/v1/models/{id:str}", sync_to_thread=False)
    def model() -> str:
        return runs.hit("metered-get")

    @get("/files/{rest:path}", sync_to_thread=False, opt={"x402_meter": None})
    def files() -> str:
        return runs.hit("free")

    return [chat, answer, model, files]


def litestar_plugin(runs: Runs, meter: dict[str, Any] | None) -> ASGIApp:
    plugins = [] if meter is None else [X402MeterPlugin(**meter)]
    return Litestar(route_handlers=litestar_handlers(runs), plugins=plugins)


def litestar_wrapped(runs: Runs, meter: dict[str, Any] | None) -> ASGIApp:
    app = Litestar(route_handlers=litestar_handlers(runs))
    return app if meter is None else X402Meter(app, **meter)


FRAMEWORKS: dict[str, tuple[Factory, str, str]] = {  # the factory, root_path, a mount
    "starlette": (starlette_app, "", "/sub"),
    "fastapi-root-path": (fastapi_app, "/api", ""),
    "fastapi-mount": (fastapi_mounted, "", "/llm"),
    "litestar-plugin": (litestar_plugin, "", ""),
    "litestar-wrapped": (litestar_wrapped, "", ""),
}


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as portal:
        yield portal


@pytest.fixture(scope="module")
def twins(x402_local_stack: LocalStack, portal: BlockingPortal) -> dict[str, Twin]:
    built = {}
    for name, (factory, root_path, mount) in FRAMEWORKS.items():
        bare_runs, metered_runs = Runs(), Runs()
        options = meter_options(x402_local_stack, routes=TABLE)
        built[name] = Twin(
            factory(bare_runs, None),
            bare_runs,
            factory(metered_runs, options),
            metered_runs,
            root_path,
            mount,
        )
    return built


# -- requests ---------------------------------------------------------------------------

KNOWN = [
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models/gpt"),
    ("POST", "/v1/answer"),
    ("POST", "/h/answer"),
    ("GET", "/free"),
    ("GET", "/files/a/b"),
    ("GET", "/x402/receipts/abcdefghijklmnopqrstuvwx"),
]
"""The apps' endpoints (and a receipt), to be edited into variants."""
METHODS = ["POST", "GET", "HEAD", "OPTIONS", "PUT", "post", "get"]
PREFIXES = ["/api", "/llm", "/sub", "/x402/receipts", "/v1"]


def _percent_encode_one(segment: str) -> str:
    return f"%{ord(segment[0]):02X}{segment[1:]}" if segment else segment


SEGMENT_EDITS: list[Callable[[str], str]] = [
    str.upper,
    str.capitalize,
    _percent_encode_one,
    lambda s: s + "/",
    lambda s: "/" + s,
    lambda s: "./" + s,
    lambda s: "x/../" + s,
    lambda s: s.replace("c", "%63"),
    lambda s: s.replace("c", "%2563"),
    lambda s: s + "%2F",
    lambda s: s + "%00",
]


@st.composite
def requests(draw: st.DrawFn, mount: str) -> tuple[str, str]:
    """A method and a request target as a client may send it (not decoded): an endpoint's
    own method and path (under the app's mount, if any, or not), with up to four edits."""
    method, path = draw(st.sampled_from(KNOWN))
    segments = path.strip("/").split("/")
    prefix = draw(st.sampled_from([mount, "", ""]))
    joiner, trailing = "/", ""
    for _ in range(draw(st.integers(0, 4))):
        edit = draw(st.sampled_from(["method", "segment", "joiner", "end", "prefix", "more"]))
        if edit == "method":
            method = draw(st.sampled_from(METHODS))
        elif edit == "segment":
            index = draw(st.integers(0, len(segments) - 1))
            segments[index] = draw(st.sampled_from(SEGMENT_EDITS))(segments[index])
        elif edit == "joiner":
            joiner = draw(st.sampled_from(["//", "%2F", "/./"]))
        elif edit == "end":
            trailing = draw(st.sampled_from(["/", "//", "/.", "%2F"]))
        elif edit == "prefix":
            prefix = draw(st.sampled_from(PREFIXES))
        else:
            segments += draw(st.lists(st.sampled_from(["v1", "chat", "", ".."]), max_size=2))
    return method, prefix + "/" + joiner.join(segments) + trailing


HOSTS = st.sampled_from([None, "api.example.com", "API.example.com:8000", "other.example"])


def uvicorn_scope(method: str, target: str, root_path: str, host: str | None) -> dict[str, Any]:
    """The scope uvicorn builds for this request line (``--root-path`` included)."""
    headers = [(b"content-type", b"application/json")]
    if host is not None:
        headers.append((b"host", host.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "method": method,
        "root_path": root_path,
        "path": root_path + unquote(target),
        "raw_path": (root_path + target).encode(),
        "query_string": b"",
        "headers": headers,
        "state": {},
    }


async def status_of(app: ASGIApp, scope: dict[str, Any]) -> int:
    """Run one request through ``app``; its status (500 if it raised)."""
    status = 0
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": b'{"model": "m"}', "more_body": False}
        await anyio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    try:
        await app(dict(scope), receive, send)
    except Exception:
        return 500
    return status


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(framework=st.sampled_from(sorted(FRAMEWORKS)), host=HOSTS, data=st.data())
def test_whenever_the_app_would_run_a_metered_endpoint_unpaid_the_meter_challenges(
    twins: dict[str, Twin],
    portal: BlockingPortal,
    framework: str,
    host: str | None,
    data: st.DataObject,
) -> None:
    twin = twins[framework]
    method, target = data.draw(requests(twin.mount), label="request")
    scope = uvicorn_scope(method, target, twin.root_path, host)
    twin.bare_runs.names.clear()
    twin.metered_runs.names.clear()
    bare_status = portal.call(status_of, twin.bare, scope)
    status = portal.call(status_of, twin.metered, scope)
    event(f"{framework}: the bare app ran {twin.bare_runs.names or 'nothing'}, metered {status}")
    assert twin.metered_runs.metered() == [], (scope["path"], status)
    if twin.bare_runs.metered():
        assert status == 402, (scope["path"], twin.bare_runs.names, status)
    if bare_status < 500:
        assert status < 500, (scope["path"], status)


def test_free_endpoints_stay_free(twins: dict[str, Twin], portal: BlockingPortal) -> None:
    """The property allows metering more than the app would run; not everything, though."""
    for name in ("starlette", "fastapi-root-path", "litestar-wrapped"):
        twin = twins[name]
        path = "/files/a/b" if name.startswith("litestar") else "/free"
        scope = uvicorn_scope("GET", path, twin.root_path, "example.com")
        assert portal.call(status_of, twin.metered, scope) == 200, name
