"""The upstream call: the gateway's headers, fixed URLs, the answer streamed back untouched.

The forwarder is the app the meter wraps. It sends the (policy-checked) body to the route's
fixed upstream URL with an allowlist of the caller's headers plus the upstream's key, and
streams the answer back byte for byte (``accept-encoding: identity``, so the meter reads
what the caller reads). What the upstream gets wrong is told plainly and never charged (the
meter charges nothing for a status >= 400):

- no connection: 502 ``upstream_unavailable``; no answer in time: 504 ``upstream_timeout``;
- the upstream refused the gateway's key (401, 403, 407): 502 ``upstream_auth_failed``,
  without its body (an auth error may quote the key); a redirect: 502
  ``upstream_redirected`` (never followed: it could point anywhere);
- any other error status is relayed with its body (bounded, the key redacted);
- a stream that stalls for ``read_timeout`` after it started is ended where it is (the
  meter charges what was delivered).
"""

from __future__ import annotations

import logging
import time
from typing import Final

import anyio
import httpx
from starlette.types import Message, Receive, Scope, Send

from x402_meter.errors import StreamCapped
from x402_meter.gateway.config import GatewayConfig, Route, Upstream
from x402_meter.gateway.labels import current_labels
from x402_meter.gateway.policy import ROUTE_KEY
from x402_meter.gateway.upstreams import RESPONSE_HEADERS
from x402_meter.responses import send_json

logger = logging.getLogger("x402_meter.gateway")

ERROR_BODY_LIMIT: Final = 64 * 1024
"""The most of an upstream's error body relayed (it is read whole, to redact the key)."""
AUTH_STATUSES: Final = frozenset({401, 403, 407})
USER_AGENT: Final = b"x402-meter-gateway"
REDACTED: Final = b"[redacted]"


class Forwarder:
    """Sends a request to its route's upstream and streams the answer back."""

    def __init__(
        self, config: GatewayConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        """``transport``: what the upstream calls go through (default: the network)."""
        self.clients: dict[str, httpx.AsyncClient] = {}
        self.request_headers: dict[str, list[tuple[bytes, bytes]]] = {}
        self.keys: dict[str, bytes] = {}
        self.urls = {path: httpx.URL(route.upstream_url) for path, route in config.routes.items()}
        """Parsed once: the per-request path does no URL parsing."""
        for upstream in config.upstreams:
            self.clients[upstream.name] = httpx.AsyncClient(
                timeout=httpx.Timeout(
                    upstream.read_timeout, connect=upstream.connect_timeout, pool=None
                ),
                follow_redirects=False,  # a redirect could point anywhere
                trust_env=False,  # no proxy or .netrc from the environment
                transport=transport,
            )
            self.request_headers[upstream.name] = [
                (b"accept-encoding", b"identity"),
                (b"user-agent", USER_AGENT),
                *upstream.headers,
                *upstream.auth_headers(),
            ]
            if upstream.api_key is not None:
                self.keys[upstream.name] = upstream.api_key.reveal().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        route = scope.get(ROUTE_KEY) if scope["type"] == "http" else None
        if not isinstance(route, Route):  # only the policy's routes are forwarded, ever
            await send_json(send, 404, {"reason": "not_found", "error": "no such endpoint here"})
            return
        await self.forward(route, scope, receive, send)

    def headers_for(self, upstream: Upstream, scope: Scope) -> list[tuple[bytes, bytes]]:
        """The caller's allowlisted headers, then the gateway's own (which win)."""
        own = self.request_headers[upstream.name]
        own_names = {name for name, _ in own}
        allowed = upstream.forward_headers - own_names
        return [(k, v) for k, v in scope["headers"] if k in allowed] + own

    async def forward(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        upstream = route.upstream
        body = await _read_body(receive)
        if body is None:
            return  # the caller left first: nothing is sent, nothing is charged
        client = self.clients[upstream.name]
        request = client.build_request(
            "POST", self.urls[route.path], content=body, headers=self.headers_for(upstream, scope)
        )
        started = time.perf_counter()
        try:
            response = await client.send(request, stream=True)
        except httpx.TimeoutException:
            await self.failed(send, upstream, 504, "upstream_timeout", "did not answer in time")
            return
        except httpx.HTTPError as exc:
            logger.warning("upstream %s unreachable: %s", upstream.name, type(exc).__name__)
            await self.failed(send, upstream, 502, "upstream_unavailable", "could not be reached")
            return
        labels = current_labels.get()
        if labels is not None:
            labels.upstream_seconds = time.perf_counter() - started
        try:
            _set_outcome(f"{response.status_code // 100}xx")
            if response.status_code in AUTH_STATUSES:
                logger.error(
                    "upstream %s refused the gateway's credentials (%d): check %s",
                    upstream.name,
                    response.status_code,
                    upstream.api_key.source if upstream.api_key else "its api_key_env",
                )
                await self.failed(
                    send, upstream, 502, "upstream_auth_failed", "refused the gateway"
                )
                return
            if response.status_code >= 400:
                await self.relay_error(upstream, response, send)
                return
            if response.status_code >= 300:  # a redirect is no answer, and is not followed
                logger.error("upstream %s redirected (%d)", upstream.name, response.status_code)
                await self.failed(send, upstream, 502, "upstream_redirected", "redirected")
                return
            await self.relay(upstream, response, receive, send)
        finally:
            await response.aclose()

    async def relay(
        self, upstream: Upstream, response: httpx.Response, receive: Receive, send: Send
    ) -> None:
        """Stream the answer as it comes; stop when the caller leaves, the upstream stalls
        or the meter ended the answer at the authorized maximum (``StreamCapped``)."""
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": _answer_headers(response),
                }
            )
            if await self._relay_body(upstream, response, receive, send):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except StreamCapped:
            pass  # the meter has closed the answer; closing the upstream stops its work

    async def _relay_body(
        self, upstream: Upstream, response: httpx.Response, receive: Receive, send: Send
    ) -> bool:
        """The body, chunk by chunk; False if the meter ended the answer first."""
        capped = False
        async with anyio.create_task_group() as tasks:

            async def caller_left() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tasks.cancel_scope.cancel()

            tasks.start_soon(caller_left)
            try:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except StreamCapped:  # caught here: a task group would wrap it in a group
                capped = True
            except httpx.TimeoutException:
                _set_outcome("timeout")
                logger.warning("upstream %s stalled mid-answer: ended it", upstream.name)
            except httpx.HTTPError as exc:
                _set_outcome("unavailable")
                logger.warning(
                    "upstream %s broke mid-answer: %s", upstream.name, type(exc).__name__
                )
            tasks.cancel_scope.cancel()
        return not capped

    async def relay_error(self, upstream: Upstream, response: httpx.Response, send: Send) -> None:
        """An upstream error, relayed with its status and (bounded, redacted) body."""
        content = bytearray()
        try:
            async for chunk in response.aiter_raw():
                content += chunk
                if len(content) >= ERROR_BODY_LIMIT:
                    break
        except httpx.HTTPError:
            pass
        body = bytes(content[:ERROR_BODY_LIMIT])
        key = self.keys.get(upstream.name)
        if key:
            body = body.replace(key, REDACTED)
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [
                    *_answer_headers(response),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def failed(
        self, send: Send, upstream: Upstream, status: int, reason: str, what: str
    ) -> None:
        _set_outcome(reason.removeprefix("upstream_"))
        await send_json(
            send,
            status,
            {"reason": reason, "error": f"the upstream {upstream.name} {what}; not charged"},
        )

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()


def _set_outcome(outcome: str) -> None:
    labels = current_labels.get()
    if labels is not None:
        labels.outcome = outcome


def _answer_headers(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() in RESPONSE_HEADERS]
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        headers.append((b"x-accel-buffering", b"no"))  # nginx: do not hold the stream
    return headers


async def _read_body(receive: Receive) -> bytes | None:
    """The request body the policy replays (read whole: the policy bounded it); None if
    the caller left."""
    chunks = []
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
