"""An async client for an x402 facilitator's HTTP API (``/supported``, ``/verify``, ``/settle``).

Thin on purpose: httpx for transport, the x402 SDK's models for the bodies. A 400 whose body
is a verify/settle answer (``isValid: false`` / ``success: false`` with a reason) is the
facilitator refusing a malformed payment: it is returned like any refusal. Everything else
that is not a well-formed 200 (connection refused, timeout, a 5xx, a 401 for a missing or
wrong API key, a 403 for a payee it does not serve, a body that does not parse) becomes
``FacilitatorUnavailableError``, which the middleware turns into a 503 with ``Retry-After``
and the settlement worker retries later: fail closed, never serve for free, never crash.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import httpx
from pydantic import BaseModel, ValidationError
from x402.http.facilitator_client_base import CreateHeadersAuthProvider
from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SettleResponse,
    SupportedResponse,
    VerifyResponse,
)
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from x402_meter.errors import FacilitatorUnavailableError

API_KEY_ENV: Final = "X402_FACILITATOR_API_KEY"
"""Where the command line and the examples read the key they send to a facilitator."""
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
"""Verify is fast; settle waits for a transaction receipt, so reads get 30 s."""

_Model = TypeVar("_Model", bound=BaseModel)
Headers = Mapping[str, str] | Callable[[], Mapping[str, str]]


class FacilitatorClient:
    """Talks to one facilitator. Safe to share between requests; one connection pool per loop."""

    def __init__(
        self,
        url: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        headers: Headers | None = None,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``api_key`` is sent as ``Authorization: Bearer`` (``x402-meter facilitator``'s
        keys); ``headers`` (or a callable returning them, for per-request tokens such as
        JWTs) authenticate to hosted facilitators, and win over ``api_key``'s header."""
        self.url = url.rstrip("/")
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._headers = headers
        self._api_key_headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> httpx.AsyncClient:
        # A pool is bound to the loop that opened its connections; test harnesses and
        # some servers run more than one loop over the life of an app.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient(timeout=self._timeout, transport=self._transport)
            self._client_loop = loop
        return self._client

    def _auth_headers(self) -> Mapping[str, str]:
        if self._headers is None:
            return self._api_key_headers
        headers = self._headers() if callable(self._headers) else self._headers
        return {**self._api_key_headers, **headers} if self._api_key_headers else headers

    async def _call(self, method: str, path: str, model: type[_Model], body: Any = None) -> _Model:
        try:
            response = await self._http().request(
                method, f"{self.url}{path}", json=body, headers=self._auth_headers()
            )
        except httpx.HTTPError as exc:
            raise FacilitatorUnavailableError(f"{path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 400:
            refusal = _refusal(model, response.content)
            if refusal is not None:
                return refusal
        if response.status_code != 200:
            raise FacilitatorUnavailableError(
                f"{path}: HTTP {response.status_code}: {response.text[:200]}"
            )
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise FacilitatorUnavailableError(f"{path}: unexpected answer: {exc}") from exc

    async def supported(self) -> SupportedResponse:
        return await self._call("GET", "/supported", SupportedResponse)

    async def verify(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        requirements: PaymentRequirements | PaymentRequirementsV1,
    ) -> VerifyResponse:
        return await self._call("POST", "/verify", VerifyResponse, _body(payload, requirements))

    async def settle(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        requirements: PaymentRequirements | PaymentRequirementsV1,
    ) -> SettleResponse:
        return await self._call("POST", "/settle", SettleResponse, _body(payload, requirements))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def bearer_auth_provider(api_key: str) -> CreateHeadersAuthProvider:
    """For the x402 SDK's ``HTTPFacilitatorClient``: send ``api_key`` as a bearer token.

    ``HTTPFacilitatorClient(FacilitatorConfig(url=..., auth_provider=bearer_auth_provider(key)))``
    talks to ``x402-meter facilitator`` the way ``FacilitatorClient(url, api_key=key)`` does.
    """
    header = {"Authorization": f"Bearer {api_key}"}
    return CreateHeadersAuthProvider(
        lambda: {"verify": dict(header), "settle": dict(header), "supported": dict(header)}
    )


def _refusal(model: type[_Model], content: bytes) -> _Model | None:
    """A 400's body if it is a verify/settle answer that says no; None for anything else."""
    try:
        answer = model.model_validate_json(content)
    except ValidationError:
        return None
    if isinstance(answer, VerifyResponse) and not answer.is_valid:
        return answer
    if isinstance(answer, SettleResponse) and not answer.success:
        return answer
    return None


def _body(
    payload: PaymentPayload | PaymentPayloadV1,
    requirements: PaymentRequirements | PaymentRequirementsV1,
) -> dict[str, Any]:
    return {
        "x402Version": payload.x402_version,
        "paymentPayload": payload.model_dump(by_alias=True, exclude_none=True, mode="json"),
        "paymentRequirements": requirements.model_dump(
            by_alias=True, exclude_none=True, mode="json"
        ),
    }
