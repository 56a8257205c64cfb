"""Which requests are metered: a route table, and endpoints marked with ``@metered``.

The middleware sits in front of the router, so for ``@metered`` it asks the app's own
router which endpoint a request will reach, with the request's own scope (Starlette and
FastAPI: ``route.matches``, through mounts and hosts; a whole Litestar app: its
``handle_routing`` on the path it routes on; Litestar middleware runs after routing and
finds the handler in the scope). Patterns are matched against every form of the path that
a router may dispatch on. Where it cannot tell, it meters. Answers are cached per method
and path, so the routing work is done once per distinct URL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import unquote

from x402_meter.errors import ConfigurationError
from x402_meter.pricing import PriceInput, PriceModel, as_price_model
from x402_meter.route_paths import RoutePattern, below_root, litestar_path, path_forms

METERED_ATTRIBUTE: Final = "__x402_meter__"
LITESTAR_OPT_KEY: Final = "x402_meter"
logger = logging.getLogger("x402_meter")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """Per-route overrides of the middleware's price and cap (None: the middleware's)."""

    price: PriceModel | None = None
    max_tokens: int | None = None
    description: str | None = None
    max_input_tokens: int | None = None


DEFAULT_SPEC: Final = RouteSpec()


def metered(
    *,
    price_per_token: PriceModel | PriceInput | None = None,
    max_tokens: int | None = None,
    description: str | None = None,
    max_input_tokens: int | None = None,
) -> Callable[[_T], _T]:
    """Meter this endpoint (Starlette, FastAPI, Litestar), optionally with its own price and cap.

    Put it under the framework's route decorator, so it marks the function itself::

        @app.post("/v1/answer")
        @metered(price_per_token="0.00001", max_tokens=512)
        async def answer(...): ...

    ``max_tokens`` is the output one payment covers; ``max_input_tokens`` the longest
    prompt the route takes (413 ``prompt_too_large`` above).
    """
    for name, value in (("max_tokens", max_tokens), ("max_input_tokens", max_input_tokens)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value <= 0
        ):
            raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
    price = None if price_per_token is None else as_price_model(price_per_token)
    spec = RouteSpec(price, max_tokens, description, max_input_tokens)

    def mark(endpoint: _T) -> _T:
        # A Litestar route handler object (decorator placed above @post): use its opt.
        opt = getattr(endpoint, "opt", None)
        if isinstance(opt, dict):
            opt[LITESTAR_OPT_KEY] = spec
        else:
            setattr(endpoint, METERED_ATTRIBUTE, spec)
        return endpoint

    return mark


def litestar_handler_spec(handler: Any) -> RouteSpec | None:
    """The spec on a Litestar route handler: its ``opt``, or ``@metered`` on its function."""
    opt = getattr(handler, "opt", None)
    spec = opt.get(LITESTAR_OPT_KEY) if isinstance(opt, dict) else None
    if spec is None:
        spec = getattr(getattr(handler, "fn", None), METERED_ATTRIBUTE, None)
    return spec if isinstance(spec, RouteSpec) else None


class _Reach:
    """What one lookup found: the endpoint's spec, and what the answer depended on."""

    __slots__ = ("host_used", "opaque", "paths", "router_found", "spec")

    def __init__(self) -> None:
        self.spec: RouteSpec | None = None
        self.paths: list[str] = []
        """The path each router on the way matched on (below its mount, normalised...)."""
        self.router_found = False
        self.host_used = False
        """A ``Host`` route was asked: the answer depends on the Host header."""
        self.opaque = False
        """A route of a kind not known here was asked: it may read anything in the scope."""


def _reach_app(app: Any, scope: dict[str, Any], reach: _Reach, depth: int = 0) -> None:
    """Follow ``app`` (through middleware, by ``.app``) to its router and ask it."""
    node = app
    for _ in range(32):
        if node is None or depth > 32 or isinstance(getattr(node, "route_table", None), RouteTable):
            return  # nothing more to see, or another meter: it meters what is below it
        router = getattr(node, "asgi_router", None)
        if router is not None and hasattr(router, "handle_routing"):  # a whole Litestar app
            reach.router_found = True
            _reach_litestar(router, scope, reach)
            return
        routes = getattr(node, "routes", None)
        if isinstance(routes, list) and all(hasattr(route, "matches") for route in routes):
            reach.router_found = True  # Starlette or FastAPI (an app or a router)
            _reach_starlette(routes, scope, reach, depth)
            return
        node = getattr(node, "app", None)


def _reach_litestar(router: Any, scope: dict[str, Any], reach: _Reach) -> None:
    from litestar.exceptions import MethodNotAllowedException, NotFoundException

    path = litestar_path(scope["path"], scope.get("root_path", ""))
    reach.paths.append(path)
    try:
        _, handler, *_ = router.handle_routing(path=path, method=scope["method"])
    except (NotFoundException, MethodNotAllowedException):
        return  # the app answers 404 or 405 itself: no handler runs
    reach.spec = litestar_handler_spec(handler)


def _reach_starlette(routes: list[Any], scope: dict[str, Any], reach: _Reach, depth: int) -> None:
    """What ``starlette.routing.Router.app`` would run: the first full match, else the first
    partial one (a plain ``Route`` answers that with 405 and runs nothing)."""
    from starlette.routing import Host, Match, Mount, Route, WebSocketRoute

    reach.paths.append(below_root(scope["path"], scope.get("root_path", "")))
    partial: tuple[Any, dict[str, Any]] | None = None
    for route in routes:
        if isinstance(route, Host):
            reach.host_used = True
        elif not isinstance(route, (Route, Mount, WebSocketRoute)):
            reach.opaque = True
        match, child_scope = route.matches(scope)
        if match is Match.FULL:
            _enter(route, {**scope, **child_scope}, reach, depth)
            return
        if match is Match.PARTIAL and partial is None:
            partial = route, child_scope
    if partial is not None and not isinstance(partial[0], Route):
        _enter(partial[0], {**scope, **partial[1]}, reach, depth)
    # Nothing matched: 404, or a redirect to the other trailing slash (metered in turn).


def _enter(route: Any, scope: dict[str, Any], reach: _Reach, depth: int) -> None:
    from starlette.routing import Host, Mount

    if isinstance(route, (Mount, Host)):
        _reach_app(route.app, scope, reach, depth + 1)
    else:
        spec = getattr(getattr(route, "endpoint", None), METERED_ATTRIBUTE, None)
        reach.spec = spec if isinstance(spec, RouteSpec) else None


NOTHING_METERED: Final = (
    "X402Meter meters nothing: no routes= were given and no endpoint is marked @metered, so "
    'every request is served free. Pass routes=["POST /v1/chat/completions"] (your paid '
    "routes), or put @metered() under the route decorator of each paid endpoint"
)


def metered_endpoint_found(app: Any) -> bool | None:
    """Whether an endpoint below ``app`` is ``@metered``, as ``RouteTable`` would find it;
    None when it cannot tell (no router found, or a route of a kind not known here)."""
    router = _router_below(app)
    if router is None:
        return None
    if hasattr(getattr(router, "asgi_router", None), "handle_routing"):  # a whole Litestar app
        handlers = [h for route in router.routes for h in getattr(route, "route_handlers", ())]
        return any(litestar_handler_spec(handler) is not None for handler in handlers)
    return _starlette_metered(router.routes)


def _router_below(app: Any) -> Any:
    """The router ``_reach_app`` would ask (through middleware, by ``.app``), or None."""
    node = app
    for _ in range(32):
        if node is None or isinstance(getattr(node, "route_table", None), RouteTable):
            return None  # nothing more to see, or another meter: it meters what is below it
        if hasattr(getattr(node, "asgi_router", None), "handle_routing"):
            return node
        routes = getattr(node, "routes", None)
        if isinstance(routes, list) and all(hasattr(route, "matches") for route in routes):
            return node
        node = getattr(node, "app", None)
    return None


def _starlette_metered(routes: list[Any], depth: int = 0) -> bool | None:
    from starlette.routing import Host, Mount, Route, WebSocketRoute

    unsure = False
    for route in routes:
        found: bool | None
        if isinstance(route, (Mount, Host)):
            router = _router_below(route.app) if depth < 32 else None
            # A mounted app with no router of its own holds nothing ``@metered`` for us.
            found = False if router is None else _routes_metered(router, depth + 1)
        elif isinstance(route, (Route, WebSocketRoute)):
            found = isinstance(getattr(route.endpoint, METERED_ATTRIBUTE, None), RouteSpec)
        else:
            found = None
        if found:
            return True
        unsure = unsure or found is None
    return None if unsure else False


def _routes_metered(router: Any, depth: int) -> bool | None:
    if hasattr(getattr(router, "asgi_router", None), "handle_routing"):
        return metered_endpoint_found(router)
    return _starlette_metered(router.routes, depth)


def _host(scope: MutableMapping[str, Any]) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"host":
            return bytes(value)
    return None


class RouteTable:
    """Decides, per request, whether and how it is metered; when it cannot tell, it meters.

    A request is metered when the endpoint the app's router would run is ``@metered``, or
    when a ``routes`` pattern matches any form of its path that some router may route on
    (``x402_meter.route_paths``). Fail closed: if asking the router raises, or nothing
    could ever be metered (no patterns, and no router found to read ``@metered`` from),
    the request is metered at the middleware's own price.

    Answers are cached by method, path and ``root_path`` (and the Host header once a
    ``Host`` route is seen: then the answer depends on it); never when a route of a kind
    not known here was asked, since it may read anything in the scope.
    """

    def __init__(self, patterns: Sequence[str] | None, app: Any, cache_size: int = 4096) -> None:
        if isinstance(patterns, str):
            raise ConfigurationError("routes must be a list of patterns, not a single string")
        self._patterns = tuple(RoutePattern(p) for p in patterns or ())
        self._app = app
        self._cache: dict[tuple[Any, ...], RouteSpec | None] = {}
        self._cache_size = cache_size
        self._host_matters = False
        self._warned = False

    def spec_for(self, scope: MutableMapping[str, Any]) -> RouteSpec | None:
        handler = scope.get("route_handler")
        if handler is not None:  # Litestar middleware: routing already happened
            return litestar_handler_spec(handler) or self._routed_table_spec(scope)
        host = _host(scope) if self._host_matters else None
        key = (scope["method"], scope["path"], scope.get("root_path", ""), host)
        try:
            return self._cache[key]
        except KeyError:
            pass
        reach = self._reach(scope)
        spec = reach.spec or self.table_spec(
            scope["method"], scope["path"], scope.get("root_path", ""), reach.paths
        )
        if spec is None and not reach.router_found and not self._patterns:
            self._warn("no routes given and no router found to read @metered from")
            spec = DEFAULT_SPEC
        if reach.host_used and not self._host_matters:
            self._host_matters = True
            key = (*key[:3], _host(scope))
        if not reach.opaque:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = spec
        return spec

    def table_spec(
        self, method: str, path: str, root_path: str = "", routed: Sequence[str] = ()
    ) -> RouteSpec | None:
        """``DEFAULT_SPEC`` if a pattern matches a form of the path (``path_forms``)."""
        if not self._patterns:
            return None
        exact, loose = path_forms(path, root_path, routed)
        for pattern in self._patterns:
            if pattern.matches(method, exact, loose):
                return DEFAULT_SPEC
        return None

    def _routed_table_spec(self, scope: MutableMapping[str, Any]) -> RouteSpec | None:
        # Litestar has replaced ``path`` with the one it routed on; ``raw_path`` is the
        # request's own (under an ASGI mount, ``path`` is the rest below the mount).
        raw = scope.get("raw_path") or b""
        key = ("routed", scope["method"], scope["path"], scope.get("root_path", ""), raw)
        try:
            return self._cache[key]
        except KeyError:
            pass
        routed = (unquote(raw.decode("latin-1")),) if raw else ()
        spec = self.table_spec(scope["method"], scope["path"], scope.get("root_path", ""), routed)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = spec
        return spec

    def _reach(self, scope: MutableMapping[str, Any]) -> _Reach:
        """Ask the app's router which endpoint it would run, with the request's own scope."""
        reach = _Reach()
        try:
            _reach_app(self._app, dict(scope), reach)
        except Exception:
            self._warn("asking the app's router raised", exc_info=True)
            reach.spec, reach.opaque = DEFAULT_SPEC, True
        return reach

    def warn_if_nothing_metered(self) -> None:
        """At startup: one WARNING when no pattern is given and no endpoint is ``@metered``
        (every request would be served free)."""
        if self._patterns:
            return
        try:
            found = metered_endpoint_found(self._app)
        except Exception:  # an app of a shape not known here: say nothing rather than fail
            logger.debug("could not list the app's endpoints", exc_info=True)
            return
        if found is False:
            logger.warning(NOTHING_METERED)

    def _warn(self, what: str, *, exc_info: bool = False) -> None:
        if not self._warned:  # once: a request can be made to raise on purpose
            self._warned = True
            logger.warning(
                "%s: metering such requests at the default price (fail closed)",
                what,
                exc_info=exc_info,
            )
