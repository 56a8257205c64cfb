"""Which requests are metered: a route table, and endpoints marked with ``@metered``.

The middleware sits in front of the router, so for ``@metered`` it asks the app's own
routes which endpoint a request will reach (Starlette and FastAPI: ``route.matches``;
Litestar runs middleware after routing and puts the handler in the scope). Answers are
cached per method and path, so the routing work is done once per distinct URL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, TypeVar

from x402_meter.errors import ConfigurationError
from x402_meter.pricing import PriceInput, PriceModel, as_price_model

METERED_ATTRIBUTE: Final = "__x402_meter__"
LITESTAR_OPT_KEY: Final = "x402_meter"
_HTTP_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """Per-route overrides of the middleware's price and cap (None: the middleware's)."""

    price: PriceModel | None = None
    max_tokens: int | None = None
    description: str | None = None


DEFAULT_SPEC: Final = RouteSpec()


def metered(
    *,
    price_per_token: PriceModel | PriceInput | None = None,
    max_tokens: int | None = None,
    description: str | None = None,
) -> Callable[[_T], _T]:
    """Meter this endpoint (Starlette, FastAPI, Litestar), optionally with its own price and cap.

    Put it under the framework's route decorator, so it marks the function itself::

        @app.post("/v1/answer")
        @metered(price_per_token="0.00001", max_tokens=512)
        async def answer(...): ...
    """
    if max_tokens is not None and (isinstance(max_tokens, bool) or max_tokens <= 0):
        raise ConfigurationError(f"max_tokens must be a positive int, got {max_tokens!r}")
    price = None if price_per_token is None else as_price_model(price_per_token)
    spec = RouteSpec(price, max_tokens, description)

    def mark(endpoint: _T) -> _T:
        # A Litestar route handler object (decorator placed above @post): use its opt.
        opt = getattr(endpoint, "opt", None)
        if isinstance(opt, dict):
            opt[LITESTAR_OPT_KEY] = spec
        else:
            setattr(endpoint, METERED_ATTRIBUTE, spec)
        return endpoint

    return mark


def _compile_pattern(pattern: str) -> tuple[frozenset[str] | None, re.Pattern[str]]:
    """``"POST /v1/chat/completions"``, ``"/v1/answer/*"``, ``"GET /items/{id}"``."""
    words = pattern.split() or [""]
    if len(words) not in (1, 2):
        raise ConfigurationError(f"routes entry {pattern!r}: expected '[METHOD[|METHOD]] /path'")
    method, path = ("", words[0]) if len(words) == 1 else (words[0], words[1])
    methods = frozenset(m.upper() for m in method.split("|")) if method else None
    if methods is not None and not methods <= _HTTP_METHODS:
        raise ConfigurationError(f"routes entry {pattern!r}: unknown HTTP method {method!r}")
    if not path.startswith("/"):
        raise ConfigurationError(f"routes entry {pattern!r}: the path must start with '/'")
    # A trailing * takes the rest of the path; elsewhere a * or a {name} is one segment.
    head, rest = (path[:-1], ".*") if path.endswith("*") else (path, "")
    parts = re.split(r"(\{[^}/]+\}|\*)", head)  # the separators are at the odd indexes
    regex = "".join("[^/]+" if i % 2 else re.escape(part) for i, part in enumerate(parts))
    return methods, re.compile(regex + rest, re.DOTALL)  # a path may hold a decoded %0A


def _starlette_spec(routes: Iterable[Any], scope: dict[str, Any]) -> RouteSpec | None:
    from starlette.routing import Match, Mount

    for route in routes:
        match, child_scope = route.matches(scope)
        if match is Match.NONE:
            continue
        if isinstance(route, Mount) and match is Match.FULL:
            found = _starlette_spec(route.routes, {**scope, **child_scope})
            if found is not None:
                return found
            continue
        if match is Match.FULL:
            spec = getattr(getattr(route, "endpoint", None), METERED_ATTRIBUTE, None)
            return spec if isinstance(spec, RouteSpec) else None
    return None


def litestar_handler_spec(handler: Any) -> RouteSpec | None:
    """The spec on a Litestar route handler: its ``opt``, or ``@metered`` on its function."""
    opt = getattr(handler, "opt", None)
    spec = opt.get(LITESTAR_OPT_KEY) if isinstance(opt, dict) else None
    if spec is None:
        spec = getattr(getattr(handler, "fn", None), METERED_ATTRIBUTE, None)
    return spec if isinstance(spec, RouteSpec) else None


EndpointLookup = Callable[[str, str, str], "RouteSpec | None"]


def _endpoint_lookup(app: Any) -> EndpointLookup | None:
    """How to find the ``@metered`` spec of the endpoint a request will reach, if the app says."""
    node, depth = app, 0
    while node is not None and depth < 32:
        router = getattr(node, "asgi_router", None)
        if router is not None and hasattr(router, "handle_routing"):  # a whole Litestar app

            def litestar(
                method: str, path: str, root_path: str, router: Any = router
            ) -> RouteSpec | None:
                try:
                    _, handler, *_ = router.handle_routing(
                        path=path.removeprefix(root_path) or "/", method=method
                    )
                except Exception:  # not found / method not allowed: the app will answer that
                    return None
                return litestar_handler_spec(handler)

            return litestar
        routes = getattr(node, "routes", None)
        if isinstance(routes, list) and all(hasattr(route, "matches") for route in routes):
            # Starlette or FastAPI (an app or a router)

            def starlette(
                method: str, path: str, root_path: str, routes: list[Any] = routes
            ) -> RouteSpec | None:
                scope = {"type": "http", "method": method, "path": path, "root_path": root_path}
                return _starlette_spec(routes, scope)

            return starlette
        node, depth = getattr(node, "app", None), depth + 1
    return None


class RouteTable:
    """Decides, per request, whether and how it is metered."""

    def __init__(self, patterns: Sequence[str] | None, app: Any, cache_size: int = 4096) -> None:
        if isinstance(patterns, str):
            raise ConfigurationError("routes must be a list of patterns, not a single string")
        self._patterns = tuple(_compile_pattern(p) for p in patterns or ())
        self._app = app
        self._endpoints: EndpointLookup | None = None
        self._endpoints_found = False
        self._lookup = lru_cache(maxsize=cache_size)(self._resolve)

    def spec_for(self, scope: MutableMapping[str, Any]) -> RouteSpec | None:
        handler = scope.get("route_handler")
        if handler is not None:  # Litestar middleware: routing already happened
            return litestar_handler_spec(handler) or self._table_spec(
                scope["method"], scope["path"]
            )
        return self._lookup(scope["method"], scope["path"], scope.get("root_path", ""))

    def _table_spec(self, method: str, path: str) -> RouteSpec | None:
        for methods, regex in self._patterns:
            if (methods is None or method in methods) and regex.fullmatch(path):
                return DEFAULT_SPEC
        return None

    def _resolve(self, method: str, path: str, root_path: str) -> RouteSpec | None:
        # Found on first use, not in __init__: frameworks add routes after middleware.
        if not self._endpoints_found:
            self._endpoints, self._endpoints_found = _endpoint_lookup(self._app), True
        if self._endpoints is not None:
            spec = self._endpoints(method, path, root_path)
            if spec is not None:
                return spec
        return self._table_spec(method, path)
