"""The request body of a paid request: buffered for admission, replayed to the app, shaped."""

from __future__ import annotations

import json
from typing import Final

from starlette.types import Message, Receive, Scope

from x402_meter.pricing import Tariff
from x402_meter.request_body import BodyBudget, read_request_body
from x402_meter.shaping import UsageChunkFilter, shape_request

NOT_JSON: Final = object()
"""What ``PaidRequestBody.json`` reads from a body that is empty or not JSON."""


class PaidRequestBody:
    """What the app is given of the request, and what the meter and the price read of it."""

    def __init__(self, scope: Scope, receive: Receive, *, limit: int) -> None:
        self.scope = scope
        self._receive = receive
        self._limit = limit
        self.seen = bytearray()
        """The body as far as it went by (up to ``limit`` bytes): all of it once buffered."""
        self.replay: bytes | None = None
        """The buffered body, until the app has been given it."""
        self.early_disconnect: Message | None = None
        """The message that ended a buffered body early (the client left), if one did."""
        self.app_scope: Scope = scope
        """The scope the app gets (a shaped body changes its ``content-length``)."""

    async def buffer(self, *, time_limit: float, budget: BodyBudget) -> None:
        """Read the whole body now, within the meter's bounds; the app gets it replayed."""
        read = await read_request_body(
            self.scope, self._receive, limit=self._limit, time_limit=time_limit, budget=budget
        )
        self.seen = bytearray(read.body)
        self.early_disconnect = read.disconnect
        self.replay = read.body

    def json(self) -> object:
        """The body as JSON; ``NOT_JSON`` when it is empty or not JSON."""
        try:
            return json.loads(self.seen) if self.seen else NOT_JSON
        except (ValueError, RecursionError):
            return NOT_JSON

    def shape(self, tariff: Tariff) -> UsageChunkFilter | None:
        """``shape_requests``: make the body the app gets ask for no more than the payment
        covers; the filter that hides a usage chunk the client did not ask for, if needed."""
        if self.replay is None:
            return None
        shaped = shape_request(
            self.scope["path"], self.replay, tariff.price, tariff.decimals, tariff.max_amount
        )
        if shaped is None:
            return None
        self.replay = shaped.body
        headers = [(k, v) for k, v in self.scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(shaped.body)).encode()))
        self.app_scope = {**self.scope, "headers": headers}
        return UsageChunkFilter() if shaped.hide_usage_chunk else None

    async def receive(self) -> Message:
        """The app's ``receive``: the buffered body first, else the server's, remembered."""
        if self.replay is not None:
            body, self.replay = self.replay, None
            return {"type": "http.request", "body": body, "more_body": False}
        if self.early_disconnect is not None:
            return self.early_disconnect
        message = await self._receive()
        limit = self._limit
        if message["type"] == "http.request" and len(self.seen) < limit:
            self.seen += message.get("body", b"")[: limit - len(self.seen)]
        return message
