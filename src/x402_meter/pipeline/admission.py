"""Admission: price → offer → decode → local checks → reserve → verify.

A request leaves admission either admitted (its authorization reserved and verified) or
answered: a 4xx saying why, a 402 with the offer, or a 503 when the facilitator is away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Final, NamedTuple

import anyio
from starlette.types import Scope
from x402.schemas import PaymentPayload
from x402.schemas.v1 import PaymentPayloadV1

from x402_meter.config import MeterConfig
from x402_meter.errors import (
    FacilitatorUnavailableError,
    PaymentAlreadyUsedError,
    PaymentError,
    RequestRefusedError,
)
from x402_meter.metering import estimate_tokens
from x402_meter.metering.prompt import prompt_text
from x402_meter.pipeline.replies import Replies
from x402_meter.pipeline.request import NOT_JSON, PaidRequestBody
from x402_meter.pricing import PricedRequest, PriceModel, PriceTable, TokenPrice
from x402_meter.protocol.checks import Authorization, check_payment
from x402_meter.protocol.headers import PAYMENT_SIGNATURE, X_PAYMENT, decode_payment
from x402_meter.protocol.offer import Offer
from x402_meter.routing import RouteSpec
from x402_meter.runtime import MeterRuntime
from x402_meter.schemes import PaymentScheme
from x402_meter.voiding import refuse_voided_payer

logger = logging.getLogger("x402_meter")

PAYMENT_HEADERS: Final = (PAYMENT_SIGNATURE.encode(), X_PAYMENT.encode())
PROMPT_COUNTED_INLINE: Final = 64 * 1024
"""Bodies up to this many bytes have their prompt counted on the event loop (well under a
millisecond); longer ones on a worker thread."""


class Admitted(NamedTuple):
    """A payment that may be served: what was offered, what was authorized, and how."""

    offer: Offer
    authorization: Authorization
    scheme: PaymentScheme


class Admission:
    """Admits one request or answers it."""

    def __init__(
        self,
        runtime: MeterRuntime,
        spec: RouteSpec,
        body: PaidRequestBody,
        replies: Replies,
    ) -> None:
        self.runtime = runtime
        self.config: MeterConfig = runtime.config
        self.spec = spec
        self.scope: Scope = body.scope
        self.body = body
        self.replies = replies
        self.decoded: PaymentPayload | PaymentPayloadV1 | None = None
        """The payment header, decoded before admission (by the refund check), if it was."""

    async def admit(self) -> Admitted | None:
        """The admitted payment, or ``None`` once the request has been answered."""
        model = self.config.price_model_for(self.spec)
        try:
            if self._reads_body(model):
                await self.body.buffer(
                    time_limit=self.config.request_body_timeout, budget=self.runtime.body_budget
                )
            price = self._price(model)
            input_tokens = await self._prompt_tokens(price)
        except (PaymentError, RequestRefusedError) as exc:
            await self.replies.refuse_request(exc)
            return None
        try:
            offer = await self.runtime.offer(self.spec, price, input_tokens)
        except FacilitatorUnavailableError as exc:
            logger.warning("facilitator unavailable: %s", exc)
            await self.replies.unavailable(str(exc))
            return None
        header = payment_header(self.scope, PAYMENT_HEADERS)
        if header is None:
            await self.replies.refuse(offer, "payment_required", "payment required", 402)
            return None
        try:
            authorization = await self._checked_and_reserved(header, offer)
        except PaymentError as exc:
            await self.replies.refuse(offer, exc.reason, exc.message, exc.status_code)
            return None
        scheme = self.runtime.schemes[authorization.scheme]
        if not await self._verified(offer, authorization, scheme):
            return None
        return Admitted(offer, authorization, scheme)

    async def _checked_and_reserved(self, header: bytes, offer: Offer) -> Authorization:
        """Decode strictly, check against the server's own offer, reserve (single use)."""
        payload = self.decoded or decode_payment(
            header, max_bytes=self.config.max_payment_header_bytes
        )
        now = int(time.time())
        resource_url = self.replies.resource_url()
        schemes = self.runtime.schemes
        authorization = check_payment(
            payload, offer, now=now, resource_url=resource_url, schemes=schemes
        )
        if authorization.expires_at - self.config.expiry_margin <= now:
            # Nothing served now could be settled in time: refused before it is reserved.
            raise PaymentError(
                "payment_expires_too_soon",
                f"the authorization must be valid for more than {self.config.expiry_margin} s",
            )
        store = self.runtime.store
        await refuse_voided_payer(store, authorization.payer, self.config.voided_payer_seconds)
        reserves = schemes[authorization.scheme].reserves_keys
        if reserves and not await store.reserve(authorization.key, authorization.expires_at):
            raise PaymentAlreadyUsedError()
        return authorization

    async def _verified(
        self, offer: Offer, authorization: Authorization, scheme: PaymentScheme
    ) -> bool:
        """Admitted by the scheme (the facilitator's verify); if not, the reservation is
        released (the authorization was never used) and the request answered."""
        try:
            refusal = await scheme.admit(authorization, self.runtime.facilitator)
        except FacilitatorUnavailableError as exc:
            await self._release(authorization, scheme)
            logger.warning("facilitator unavailable during verify: %s", exc)
            await self.replies.unavailable(str(exc))
            return False
        except BaseException:
            await self._release(authorization, scheme)
            raise
        if refusal is not None:
            await self._release(authorization, scheme)
            if refusal.extra is not None:
                offer = offer.with_extra(scheme.name, refusal.extra)
            await self.replies.refuse(offer, refusal.reason, refusal.message, refusal.status)
            return False
        return True

    async def _release(self, authorization: Authorization, scheme: PaymentScheme) -> None:
        if scheme.reserves_keys:
            await self.runtime.store.release(authorization.key)

    def _reads_body(self, model: PriceModel) -> bool:
        """Whether admission needs the body: for the prompt's price, the model's price or
        the shaping. (A prompt that costs nothing is only counted as it goes by.)"""
        if self.config.shape_requests or not isinstance(model, TokenPrice):
            return True
        return model.input > 0 or model.cached_input > 0

    async def _prompt_tokens(self, price: TokenPrice) -> int:
        """The prompt as the meter estimates it (what the 402 asks to cover on top of the
        output), or 0 when input is free. Over ``max_input_tokens``: 413."""
        if not (price.input > 0 or price.cached_input > 0):
            return 0
        body = bytes(self.body.seen)
        if len(body) <= PROMPT_COUNTED_INLINE:
            tokens = estimate_tokens(prompt_text(body))
        else:  # a long prompt takes milliseconds to count: not on the event loop
            tokens = await anyio.to_thread.run_sync(estimate_tokens, prompt_text(body))
        limit = self.spec.max_input_tokens or self.config.max_input_tokens
        if limit is not None and tokens > limit:
            raise RequestRefusedError(
                "prompt_too_large",
                f"the prompt has about {tokens} tokens; this route takes at most {limit}",
                status_code=413,
            )
        return tokens

    def _price(self, model: PriceModel) -> TokenPrice:
        if isinstance(model, TokenPrice):
            return model
        body = self.body.json()
        name = body.get("model") if isinstance(body, dict) else None
        requested = name if isinstance(name, str) else None
        if isinstance(model, PriceTable):
            price = model.price_for(requested)
            if price is None:
                raise model_refusal(model, body, requested)
            return price
        json_body = None if body is NOT_JSON else body
        request = PricedRequest(self.scope["method"], self.scope["path"], requested, json_body)
        return model(request)


def model_refusal(table: PriceTable, body: object, requested: str | None) -> RequestRefusedError:
    """400 for a request a price table cannot price, saying why, with the models it prices."""
    models = [name for name, _ in table.prices]
    listed = ", ".join(models)
    if body is NOT_JSON:
        reason = "invalid_json_body"
        message = f"this route is priced by model: send a JSON body naming one of: {listed}"
    elif not requested:
        reason = "model_required"
        message = f'this route is priced by model: name one in "model", one of: {listed}'
    else:
        reason = "unknown_model"
        message = (
            f"no price for model {requested[:80]!r} here; priced: {listed} (and any model whose "
            "name starts with one of them)"
        )
    return RequestRefusedError(reason, message, status_code=400, details={"models": models})


def payment_header(scope: Scope, names: Sequence[bytes]) -> bytes | None:
    """The first of ``names`` the request sent (PAYMENT-SIGNATURE wins over X-PAYMENT)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in names:
            found.setdefault(name, value)
    for name in names:
        if name in found:
            return found[name]
    return None
