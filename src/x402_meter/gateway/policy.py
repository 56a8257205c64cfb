"""The gateway's first word on a request, before the meter: route, body, plan.

Only an allowlisted ``POST`` path goes further, matched by an exact look-up of its decoded
path, whose raw form must be the same bytes (no percent-encoding: ``%2F`` or ``%2e%2e``
cannot make another path of an allowed one). Its body is read within bounds, must be a JSON
object naming a model that a plan of the route prices; the plan's defaults and pinned
fields are applied, and the meter and the forwarder get the body as it now is. Everything
else is answered here and never forwarded.

With sessions on, one more kind of request reaches the meter: a session's refund, and the
x402 clients' ``GET`` probe for it, at an allowlisted path (any method but ``POST``, or a
``POST`` whose payment is a refund). It goes without the route the forwarder needs, so the
meter answers it (a refund, the probe's 402) and anything else it passes on is refused
404 by the forwarder: nothing of it is ever sent upstream.
"""

from __future__ import annotations

import json
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from x402_meter.errors import RequestRefusedError
from x402_meter.gateway.config import RECEIPTS_PATH, GatewayConfig, Route
from x402_meter.gateway.labels import current_labels
from x402_meter.gateway.plans import PlanMatch, apply_plan
from x402_meter.pipeline.refunds import is_refund_payment, peek_payment
from x402_meter.request_body import BodyBudget, read_request_body
from x402_meter.responses import send_json

ROUTE_KEY: Final = "x402_gateway.route"
"""The scope key holding the ``Route`` the policy matched (the forwarder's only source)."""
MAX_BUFFERED_BODIES: Final = 64 * 1024 * 1024


class RequestPolicy:
    """Admits allowlisted, well-formed, priced requests to the meter; answers the rest."""

    def __init__(
        self, app: ASGIApp, config: GatewayConfig, *, refund_header_bytes: int | None = None
    ) -> None:
        """``refund_header_bytes``: sessions are on, and a refund's payment header may be
        this long (the meter's limit); None: no refunds, every request is priced here."""
        self.app = app
        self.refund_header_bytes = refund_header_bytes
        self.routes = dict(config.routes)
        self.limit = config.max_request_body
        self.time_limit = config.request_body_timeout
        self.budget = BodyBudget(max(MAX_BUFFERED_BODIES, config.max_request_body))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if scope["method"] in ("GET", "HEAD") and path.startswith(RECEIPTS_PATH):
            await self.app(scope, receive, send)  # the meter serves receipts
            return
        if self.is_refund_door(scope):
            await self.app(scope, receive, send)  # no ROUTE_KEY: the forwarder sends nothing
            return
        route = self.route(scope)
        if route is None:
            await send_json(send, 404, {"reason": "not_found", "error": "no such endpoint here"})
            return
        labels = current_labels.get()
        if labels is not None:
            labels.upstream = route.upstream.name
        try:
            body, match, ended = await self.read(route, scope, receive)
        except RequestRefusedError as exc:
            headers = None
            if exc.retry_after is not None:
                headers = [(b"retry-after", b"%d" % exc.retry_after)]
            await send_json(
                send,
                exc.status_code,
                {"reason": exc.reason, "error": exc.message, **exc.details},
                headers,
            )
            return
        if labels is not None:
            labels.model = match.label
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        forwarded = {**scope, "headers": headers, ROUTE_KEY: route}
        await self.app(forwarded, _replay(body, ended, receive), send)

    def route(self, scope: Scope) -> Route | None:
        if scope["method"] != "POST":
            return None
        return self.allowlisted(scope)

    def is_refund_door(self, scope: Scope) -> bool:
        """A session's refund, or the probe for one, at an allowlisted path: the meter's
        alone (it reaches the meter without a route, so never the upstream)."""
        if self.refund_header_bytes is None or self.allowlisted(scope) is None:
            return False
        if scope["method"] != "POST":
            return True
        _, payload = peek_payment(scope, self.refund_header_bytes)
        return is_refund_payment(payload)

    def allowlisted(self, scope: Scope) -> Route | None:
        """The route at the request's exact path, whatever its method."""
        path: str = scope["path"]
        raw = scope.get("raw_path")
        if raw is not None and raw != path.encode("latin-1", "replace"):
            return None  # encoded characters (or a query the server left in): not ours
        if scope.get("root_path"):
            return None  # mounted somewhere: the allowlist is of whole paths
        return self.routes.get(path)

    async def read(
        self, route: Route, scope: Scope, receive: Receive
    ) -> tuple[bytes, PlanMatch, Message | None]:
        read = await read_request_body(
            scope, receive, limit=self.limit, time_limit=self.time_limit, budget=self.budget
        )
        try:
            body: Any = json.loads(read.body)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            raise RequestRefusedError(
                "invalid_json_body", "send a JSON object naming a model", status_code=400
            )
        changed = False
        default_model = route.upstream.default_model
        if "model" not in body and default_model is not None:
            body["model"] = default_model
            changed = True
        model = body.get("model")
        match = route.plans.match(model) if isinstance(model, str) else None
        if match is None:
            raise route.plans.refusal(model)
        changed = apply_plan(body, match.plan) or changed
        data = json.dumps(body).encode() if changed else read.body
        return data, match, read.disconnect


def _replay(body: bytes, ended: Message | None, receive: Receive) -> Receive:
    """The body once, then the server's messages (a disconnect, when the client leaves)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        if ended is not None:
            return ended
        return await receive()

    return replay
