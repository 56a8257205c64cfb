"""A self-hosted x402 facilitator: the SDK's facilitator, served over HTTP.

The x402 SDK ships a complete facilitator (``x402FacilitatorSync`` with the EVM ``exact``
and ``upto`` schemes) but no HTTP server for it. This module is that server: ``GET
/supported``, ``POST /verify`` and ``POST /settle`` with the bodies the SDK's
``HTTPFacilitatorClient`` sends. The SDK's facilitator calls blocking web3 code, so each
request runs it in a worker thread and the event loop stays free.

Run it with ``x402-meter facilitator --rpc-url URL --network eip155:N`` (the settling key
comes from ``X402_FACILITATOR_PRIVATE_KEY``); the local dev stack runs the same code.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio.to_thread
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from x402 import x402FacilitatorSync
from x402.extensions.eip2612_gas_sponsoring import EIP2612_GAS_SPONSORING
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact.facilitator import ExactEvmScheme, ExactEvmSchemeConfig
from x402.mechanisms.evm.upto import UptoEvmFacilitatorScheme, UptoEvmSchemeConfig
from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SchemeNotFoundError,
    SettleResponse,
    VerifyResponse,
)
from x402.schemas.helpers import parse_payment_payload, parse_payment_requirements
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

logger = logging.getLogger("x402_meter.facilitator")

PRIVATE_KEY_ENV: Final = "X402_FACILITATOR_PRIVATE_KEY"
MAX_BODY_BYTES: Final = 64 * 1024
"""Verify/settle bodies are a few kilobytes; anything far larger is not a payment."""


class FacilitatorConfigError(ValueError):
    """The facilitator cannot start with the given chain, network or key."""


def build_evm_facilitator(
    private_key: str,
    rpc_url: str,
    network: str,
    *,
    confirmation_timeout_seconds: float = 60.0,
) -> x402FacilitatorSync:
    """An SDK facilitator with ``exact`` and ``upto`` for one EVM network.

    Checks that ``network`` (CAIP-2, ``eip155:<chain id>``) is the chain behind
    ``rpc_url``: a facilitator that signs for the wrong chain fails every settlement.
    ``simulate_in_settle`` is on so that a settlement that would revert (a used nonce, an
    expired permit) is refused before a transaction spends gas.
    """
    namespace, _, reference = network.partition(":")
    if namespace != "eip155" or not reference.isdigit():
        raise FacilitatorConfigError(f"network must look like 'eip155:<chain id>', got {network!r}")
    signer = FacilitatorWeb3Signer(
        private_key=private_key,
        rpc_url=rpc_url,
        confirmation_timeout_seconds=confirmation_timeout_seconds,
    )
    try:
        chain_id = signer.get_chain_id()
    except Exception as exc:
        raise FacilitatorConfigError(f"cannot reach the chain at {rpc_url}: {exc}") from exc
    if chain_id != int(reference):
        raise FacilitatorConfigError(f"{rpc_url} serves chain id {chain_id}, not {network}")
    facilitator = x402FacilitatorSync()
    facilitator.register(
        [network], ExactEvmScheme(signer, ExactEvmSchemeConfig(simulate_in_settle=True))
    )
    facilitator.register(
        [network], UptoEvmFacilitatorScheme(signer, UptoEvmSchemeConfig(simulate_in_settle=True))
    )
    # First payments from wallets without a Permit2 approval: the payer signs an EIP-2612
    # permit too, and the upto proxy's settleWithPermit submits both (the facilitator pays gas).
    facilitator.register_extension(EIP2612_GAS_SPONSORING)
    return facilitator


class _BadRequestError(ValueError):
    pass


async def _read_request(
    request: Request,
) -> tuple[PaymentPayload | PaymentPayloadV1, PaymentRequirements | PaymentRequirementsV1]:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise _BadRequestError(f"body larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _BadRequestError(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise _BadRequestError("body must be a JSON object")
        raw_payload, raw_requirements = data.get("paymentPayload"), data.get("paymentRequirements")
        # The SDK's parsers assume objects; anything else must not reach them.
        if not isinstance(raw_payload, dict) or not isinstance(raw_requirements, dict):
            raise _BadRequestError("paymentPayload and paymentRequirements must be JSON objects")
        payload = parse_payment_payload(raw_payload)
        requirements = parse_payment_requirements(payload.x402_version, raw_requirements)
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise _BadRequestError(f"invalid verify/settle body: {exc}") from exc
    return payload, requirements


def _bad_request(exc: Exception) -> Response:
    return JSONResponse({"error": "invalid_request", "message": str(exc)[:500]}, status_code=400)


def _model(result: VerifyResponse | SettleResponse) -> Response:
    return JSONResponse(result.model_dump(by_alias=True, exclude_none=True, mode="json"))


def create_facilitator_app(facilitator: x402FacilitatorSync) -> Starlette:
    """The HTTP face of ``facilitator``: the routes an x402 resource server calls."""

    async def supported(request: Request) -> Response:
        result = facilitator.get_supported()
        return JSONResponse(result.model_dump(by_alias=True, exclude_none=True, mode="json"))

    async def verify(request: Request) -> Response:
        try:
            payload, requirements = await _read_request(request)
        except _BadRequestError as exc:
            return _bad_request(exc)
        try:
            result = await anyio.to_thread.run_sync(facilitator.verify, payload, requirements)
        except SchemeNotFoundError as exc:
            result = VerifyResponse(
                is_valid=False, invalid_reason="unsupported_scheme", invalid_message=str(exc)
            )
        return _model(result)

    async def settle(request: Request) -> Response:
        try:
            payload, requirements = await _read_request(request)
        except _BadRequestError as exc:
            return _bad_request(exc)
        try:
            result = await anyio.to_thread.run_sync(facilitator.settle, payload, requirements)
        except SchemeNotFoundError as exc:
            result = SettleResponse(
                success=False,
                error_reason="unsupported_scheme",
                error_message=str(exc),
                transaction="",
                network=str(requirements.network),
            )
        return _model(result)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/supported", supported, methods=["GET"]),
            Route("/verify", verify, methods=["POST"]),
            Route("/settle", settle, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``app`` with uvicorn until SIGINT/SIGTERM; ``on_ready(url)`` once it listens.

    The socket is bound here, before uvicorn starts, so ``port=0`` gets a free port from
    the kernel with no window in which another process could take it.
    """
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit("serving needs uvicorn: pip install 'x402-meter[devstack]'") from exc

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{bound_port}"

    class _AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: Sequence[socket.socket] | None = None) -> None:
            await super().startup(sockets=list(sockets) if sockets else None)
            if self.started and on_ready is not None:
                on_ready(url)

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    _AnnouncingServer(config).run(sockets=[sock])
