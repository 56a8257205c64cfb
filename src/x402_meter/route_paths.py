"""The forms of a request path that a router may route on, and route patterns over them.

A router does not always route on ``scope["path"]`` as the server gave it: Starlette routes
on the path below ``root_path`` (a ``Mount``, ``uvicorn --root-path``), Litestar first cuts
the path at ``root_path`` and collapses slashes (``//v1/x/`` is ``/v1/x``), a proxy in front
may resolve ``..`` or decode ``%2F`` once more. A route table that is matched against one
form while the router dispatches on another serves answers for free, so the table is
matched against every form: a request is metered when any of them matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote

from x402_meter.errors import ConfigurationError

_HTTP_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def below_root(path: str, root_path: str) -> str:
    """The path below ``root_path``, as Starlette's routes see it (``get_route_path``)."""
    if not root_path or not path.startswith(root_path):
        return path
    rest = path[len(root_path) :]
    return rest if rest == "" or rest.startswith("/") else path


def collapsed(path: str) -> str:
    """Leading and repeated slashes collapsed, the trailing one dropped (Litestar's
    ``normalize_path``): ``//v1//chat/`` is ``/v1/chat``."""
    return "/" + "/".join(segment for segment in path.split("/") if segment)


def litestar_path(path: str, root_path: str) -> str:
    """The path Litestar routes on: cut at the first ``root_path`` (wherever it is), then
    collapsed, as ``litestar._asgi.asgi_router.ASGIRouter.__call__`` does."""
    if root_path:
        path = path.split(root_path, maxsplit=1)[-1]
    return collapsed(path)


def without_dot_segments(path: str) -> str:
    """``path`` collapsed, with ``.`` and ``..`` segments resolved (RFC 3986, 5.2.4)."""
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    return "/" + "/".join(kept)


def path_forms(path: str, root_path: str, routed: Iterable[str] = ()) -> tuple[set[str], set[str]]:
    """The forms of ``path`` a router may dispatch on: as given (``path``, below
    ``root_path``, and ``routed``: the paths the app's routers matched on), and loose ones
    (collapsed, dot segments resolved, percent-decoded once more)."""
    exact = {path, below_root(path, root_path), *routed}
    if root_path:
        exact.add(path.split(root_path, maxsplit=1)[-1])
    loose: set[str] = set()
    for form in exact:
        for decoded in (form, unquote(form)):
            loose.add(collapsed(decoded))
            loose.add(without_dot_segments(decoded))
    return exact, loose


class RoutePattern:
    """One ``routes=[...]`` entry: ``"POST /v1/chat/completions"``, ``"/v1/answer/*"``,
    ``"GET|HEAD /items/{id}"``. A trailing ``*`` takes the rest of the path; elsewhere a
    ``*`` or a ``{name}`` is one segment.

    It matches a method and path exactly as written, and also loosely (any case, the path
    collapsed): what a lenient router or proxy may still send to the endpoint. ``GET``
    includes ``HEAD``, which Starlette answers with the ``GET`` endpoint.
    """

    def __init__(self, pattern: str) -> None:
        words = pattern.split() or [""]
        if len(words) not in (1, 2):
            raise ConfigurationError(
                f"routes entry {pattern!r}: expected '[METHOD[|METHOD]] /path'"
            )
        method, path = ("", words[0]) if len(words) == 1 else (words[0], words[1])
        methods = frozenset(m.upper() for m in method.split("|")) if method else None
        if methods is not None and not methods <= _HTTP_METHODS:
            raise ConfigurationError(f"routes entry {pattern!r}: unknown HTTP method {method!r}")
        if not path.startswith("/"):
            raise ConfigurationError(f"routes entry {pattern!r}: the path must start with '/'")
        if methods is not None and "GET" in methods:
            methods |= {"HEAD"}
        self.methods = methods
        self.exact = _compile(path, loose=False)
        self.loose = _compile(path, loose=True)

    def matches(self, method: str, exact: Iterable[str], loose: Iterable[str]) -> bool:
        if self.methods is not None and method.upper() not in self.methods:
            return False
        return any(self.exact.fullmatch(form) for form in exact) or any(
            self.loose.fullmatch(form) for form in loose
        )


def _compile(path: str, *, loose: bool) -> re.Pattern[str]:
    head, rest = (path[:-1], ".*") if path.endswith("*") else (path, "")
    if loose:
        trailing_slash = head.endswith("/")
        head = collapsed(head)
        if rest and trailing_slash:  # "/v1/answer/*" also takes "/v1/answer" once collapsed
            head, rest = ("" if head == "/" else head), "(?:/.*)?"
    parts = re.split(r"(\{[^}/]+\}|\*)", head)  # the separators are at the odd indexes
    regex = "".join("[^/]+" if i % 2 else re.escape(part) for i, part in enumerate(parts))
    flags = re.DOTALL | (re.IGNORECASE if loose else 0)  # a path may hold a decoded %0A
    return re.compile(regex + rest, flags)
