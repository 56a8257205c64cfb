"""RouteTable.spec_for: it asks the app's router as the router will answer, and meters when
it cannot tell (issue 13, finding 1). Real Starlette and Litestar apps, no server."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar, post
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Host, Match, Mount, Route, Router

from x402_meter import X402Meter, metered
from x402_meter.routing import DEFAULT_SPEC, RouteSpec, RouteTable

SPEC = RouteSpec(max_tokens=7)


def scope(method: str, path: str, root_path: str = "", **headers: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }


async def free(request: Request) -> PlainTextResponse:
    return PlainTextResponse("free")  # pragma: no cover - never called


def marked() -> Any:
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("paid")  # pragma: no cover - never called

    return metered(max_tokens=7)(endpoint)


class Exploding(BaseRoute):
    def matches(self, scope: Any) -> tuple[Match, dict[str, Any]]:
        raise RuntimeError("a route that cannot answer")


class ByTier(BaseRoute):
    """A route of a kind RouteTable does not know: it reads a header."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint

    def matches(self, scope: Any) -> tuple[Match, dict[str, Any]]:
        tier = dict(scope["headers"]).get(b"x-tier")
        return (Match.FULL if tier == b"paid" else Match.NONE), {}


def test_a_router_that_raises_is_metered_not_served_free() -> None:
    table = RouteTable(None, Starlette(routes=[Exploding()]))
    assert table.spec_for(scope("POST", "/anything")) is DEFAULT_SPEC


def test_without_patterns_and_without_a_router_everything_is_metered() -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None: ...

    assert RouteTable(None, bare).spec_for(scope("GET", "/")) is DEFAULT_SPEC


def test_a_bare_app_with_patterns_meters_only_those() -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None: ...

    table = RouteTable(["POST /v1/chat/completions"], bare)
    assert table.spec_for(scope("POST", "//v1/chat/completions/")) is DEFAULT_SPEC
    assert table.spec_for(scope("GET", "/health")) is None


def test_host_routes_are_asked_with_the_request_headers_and_cached_per_host() -> None:
    app = Starlette(
        routes=[
            Host("free.example", app=Router([Route("/v1/answer", free)])),
            Host("api.example", app=Router([Route("/v1/answer", marked())])),
        ]
    )
    table = RouteTable(None, app)
    assert table.spec_for(scope("GET", "/v1/answer", host="free.example")) is None
    assert table.spec_for(scope("GET", "/v1/answer", host="api.example")) == SPEC
    assert table.spec_for(scope("GET", "/v1/answer", host="free.example")) is None
    assert table.spec_for(scope("GET", "/v1/answer")) is None  # no Host header: 404


def test_a_route_of_an_unknown_kind_is_asked_every_time() -> None:
    table = RouteTable(None, Starlette(routes=[ByTier(marked()), Route("/{p:path}", free)]))
    assert table.spec_for(scope("GET", "/x", **{"x-tier": "free"})) is None
    assert table.spec_for(scope("GET", "/x", **{"x-tier": "paid"})) == SPEC


def test_the_router_runs_the_first_full_match_as_starlette_does() -> None:
    # The mount takes /v1/...: the @metered route after it is never reached, and is not
    # what the request is metered by; the table matches the path below the mount.
    app = Starlette(
        routes=[
            Mount("/v1", routes=[Route("/chat/completions", free)]),
            Route("/v1/chat/completions", marked()),
        ]
    )
    assert RouteTable(None, app).spec_for(scope("POST", "/v1/chat/completions")) is None
    table = RouteTable(["POST /chat/completions"], app)
    assert table.spec_for(scope("POST", "/v1/chat/completions")) is DEFAULT_SPEC


def test_a_mounted_app_is_asked_below_its_mount() -> None:
    inner = Starlette(routes=[Route("/answer", marked(), methods=["POST"])])
    table = RouteTable(None, Starlette(routes=[Mount("/llm", app=inner)]))
    assert table.spec_for(scope("POST", "/llm/answer")) == SPEC
    assert table.spec_for(scope("GET", "/llm/answer")) is None  # 405: nothing runs


def test_another_meter_below_is_left_to_meter_its_own_routes() -> None:
    inner = Starlette(routes=[Route("/answer", marked())])
    nested = X402Meter(inner, pay_to="0x" + "33" * 20, price_per_token="0.000001")
    table = RouteTable(None, Starlette(routes=[Mount("/llm", app=nested)]))
    assert table.spec_for(scope("POST", "/llm/answer")) is None


@pytest.mark.parametrize("path", ["/v1/answer", "/v1/answer/", "//v1//answer"])
def test_a_wrapped_litestar_app_is_asked_on_the_path_it_routes_on(path: str) -> None:
    @post("/v1/answer", sync_to_thread=False)
    @metered(max_tokens=7)
    def litestar_answer() -> str:
        return "paid"  # pragma: no cover - never called

    table = RouteTable(None, Litestar(route_handlers=[litestar_answer]))
    assert table.spec_for(scope("POST", path)) == SPEC
    assert table.spec_for(scope("POST", "/api" + path, "/api")) == SPEC
    assert table.spec_for(scope("GET", path)) is None  # 405


def test_under_litestar_middleware_the_table_also_sees_the_raw_path() -> None:
    # Litestar replaces ``path`` with the rest below an ASGI mount; ``raw_path`` is the
    # request's own.
    table = RouteTable(["POST /llm/v1/chat/completions"], app=None)
    routed = {**scope("POST", "/v1/chat/completions/"), "raw_path": b"/llm/v1/chat/completions"}
    assert table.spec_for({**routed, "route_handler": object()}) is DEFAULT_SPEC
