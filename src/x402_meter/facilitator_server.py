"""A self-hosted x402 facilitator: the SDK's facilitator, served over HTTP.

The x402 SDK ships a complete facilitator (``x402FacilitatorSync`` with the EVM ``exact``,
``upto`` and ``batch-settlement`` schemes) but no HTTP server for it. This module is that
server: ``GET /supported``, ``POST /verify`` and ``POST /settle`` with the bodies the SDK's
``HTTPFacilitatorClient`` sends. The SDK's facilitator calls blocking web3 code, so each
request runs it in a worker thread and the event loop stays free.

Run it with ``x402-meter facilitator --rpc-url URL --network eip155:N`` (the settling key
comes from ``X402_FACILITATOR_PRIVATE_KEY``); the local dev stack runs the same code.

``batch-settlement`` (payment channels) goes through the same two endpoints: ``/verify``
and ``/settle`` a payer's deposit, and ``/settle`` a server's claims, sweeps and
cooperative refunds, all behind the same API keys and payee allowlist.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from web3 import Web3
from x402 import x402FacilitatorSync
from x402.extensions.eip2612_gas_sponsoring import EIP2612_GAS_SPONSORING
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.batch_settlement.facilitator import BatchSettlementEvmFacilitator
from x402.mechanisms.evm.batch_settlement.types import AuthorizerSigner
from x402.mechanisms.evm.exact.facilitator import ExactEvmScheme, ExactEvmSchemeConfig
from x402.mechanisms.evm.exact.v1.facilitator import ExactEvmSchemeV1, ExactEvmSchemeV1Config
from x402.mechanisms.evm.upto import UptoEvmFacilitatorScheme, UptoEvmSchemeConfig
from x402.schemas import SchemeNotFoundError, SettleResponse, VerifyResponse

from x402_meter.errors import FacilitatorConfigError as FacilitatorConfigError
from x402_meter.facilitator_access import ApiKeys, PayeeAllowlist
from x402_meter.facilitator_request import (
    INVALID_PAYLOAD,
    INVALID_REQUEST,
    MalformedRequestError,
    check_request,
    decode_json,
    network_of,
)
from x402_meter.protocol.offer import v1_network_name

logger = logging.getLogger("x402_meter.facilitator")

PRIVATE_KEY_ENV: Final = "X402_FACILITATOR_PRIVATE_KEY"
MAX_BODY_BYTES: Final = 256 * 1024
"""Verify/settle bodies are a few kilobytes, a batch-settlement claim about 0.7 KB per
voucher (the SDK claims up to 100 at once): anything far larger is not a payment."""
TX_GAS_LIMIT: Final = 8_000_000
"""The gas limit of every transaction the facilitator sends. The SDK's signer defaults to
500,000: enough for ``exact`` and ``upto``, not for a batch-settlement claim of many
vouchers (the SDK batches up to 100; 100 take about 2.1 million gas on the dev chain, and
at 500,000 such a transaction is never mined). A limit is a cap, not a price: a
transaction pays for the gas it uses."""


class ChainSigner(FacilitatorWeb3Signer):
    """The SDK's facilitator signer, with its web3 client readable as ``w3``.

    The SDK's batch-settlement sweep reads the swept amount from the ``Settled`` event
    through ``signer.w3`` (or ``signer.web3``), which ``FacilitatorWeb3Signer`` keeps
    private: without this, every sweep's settle answer carries an empty ``amount``.
    """

    @property
    def w3(self) -> Web3:
        return self._w3


def build_evm_facilitator(
    private_key: str,
    rpc_url: str,
    network: str,
    *,
    confirmation_timeout_seconds: float = 60.0,
    receiver_authorizer: AuthorizerSigner | None = None,
) -> x402FacilitatorSync:
    """An SDK facilitator with ``exact``, ``upto`` and ``batch-settlement`` for one EVM network.

    Where the network has an x402 v1 name (``base``, ``base-sepolia``, ...) it also serves
    v1 ``exact`` under that name: v1-only clients such as ``x402-fetch`` 1.x pay with it.

    Checks that ``network`` (CAIP-2, ``eip155:<chain id>``) is the chain behind
    ``rpc_url``: a facilitator that signs for the wrong chain fails every settlement.
    ``simulate_in_settle`` is on so that a settlement that would revert (a used nonce, an
    expired permit) is refused before a transaction spends gas (batch-settlement simulates
    every deposit, claim, sweep and refund before sending it).

    ``receiver_authorizer``: the key that signs claims and refunds for channels naming its
    address; ``/supported`` advertises it as ``receiverAuthorizer``. None: servers sign
    their own (see ``facilitator_authorizer``).
    """
    namespace, _, reference = network.partition(":")
    if namespace != "eip155" or not reference.isdigit():
        raise FacilitatorConfigError(f"network must look like 'eip155:<chain id>', got {network!r}")
    signer = ChainSigner(
        private_key=private_key,
        rpc_url=rpc_url,
        confirmation_timeout_seconds=confirmation_timeout_seconds,
        gas_limit=TX_GAS_LIMIT,
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
    facilitator.register(
        [network], BatchSettlementEvmFacilitator(signer, authorizer_signer=receiver_authorizer)
    )
    v1_name = v1_network_name(network)
    if v1_name != network:  # v1 has no upto, and no names for other chains (e.g. 31337)
        facilitator.register_v1(
            [v1_name], ExactEvmSchemeV1(signer, ExactEvmSchemeV1Config(simulate_in_settle=True))
        )
    # First payments from wallets without a Permit2 approval: the payer signs an EIP-2612
    # permit too, and the upto proxy's settleWithPermit submits both (the facilitator pays gas).
    facilitator.register_extension(EIP2612_GAS_SPONSORING)
    return facilitator


_ERROR_MESSAGE_CHARS: Final = 500
CHAIN_UNAVAILABLE: Final = "chain_unavailable"
UNAUTHORIZED: Final = "unauthorized"
PAY_TO_NOT_SERVED: Final = "pay_to_not_served"
UNSUPPORTED_SCHEME: Final = "unsupported_scheme"


def _verify_refusal(status: int, reason: str, message: str, network: str) -> Response:
    """A VerifyResponse that says no: the shape every x402 client reads."""
    body = {"isValid": False, "invalidReason": reason, "invalidMessage": message}
    return JSONResponse(body, status_code=status)


def _settle_refusal(status: int, reason: str, message: str, network: str) -> Response:
    """A SettleResponse that says no (``transaction`` empty: nothing was sent)."""
    body = {
        "success": False,
        "errorReason": reason,
        "errorMessage": message,
        "transaction": "",
        "network": network,
    }
    return JSONResponse(body, status_code=status)


_Refusal = Callable[[int, str, str, str], Response]
_Operation = Callable[[Any, Any], VerifyResponse | SettleResponse]


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    too_large = MalformedRequestError(INVALID_REQUEST, f"body larger than {MAX_BODY_BYTES} bytes")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large
    return bytes(body)


class _PaymentEndpoint:
    """``/verify`` or ``/settle``: authenticate, check the body strictly, check the payee,
    then run the SDK in a worker thread. Every refusal is the endpoint's own response shape
    with a reason; nothing the caller sends can make it answer 500."""

    def __init__(
        self,
        operation: _Operation,
        refuse: _Refusal,
        *,
        api_keys: ApiKeys | None,
        payees: PayeeAllowlist | None,
    ) -> None:
        self._operation = operation
        self._refuse = refuse
        self._api_keys = api_keys
        self._payees = payees

    def _unauthorized(self, request: Request) -> Response | None:
        if self._api_keys is None:
            return None
        key = self._api_keys.presented(request.headers)
        if key is not None and self._api_keys.accepts(key):
            return None
        challenge = "Bearer" if key is None else 'Bearer error="invalid_token"'
        message = "an API key is required" if key is None else "the API key is not valid"
        response = self._refuse(401, UNAUTHORIZED, message, "")
        response.headers["WWW-Authenticate"] = challenge
        return response

    async def handle(self, request: Request) -> Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        network = ""
        try:
            data = decode_json(await _read_body(request))
            network = network_of(data)
            checked = check_request(data)
        except MalformedRequestError as exc:
            return self._refuse(400, exc.reason, exc.message[:_ERROR_MESSAGE_CHARS], network)
        if self._payees is not None and checked.pay_to not in self._payees:
            return self._refuse(
                403, PAY_TO_NOT_SERVED, "this facilitator does not serve that payTo", network
            )
        try:
            result = await anyio.to_thread.run_sync(
                self._operation, checked.payload, checked.requirements
            )
        except SchemeNotFoundError as exc:
            return self._refuse(200, UNSUPPORTED_SCHEME, str(exc), network)
        except OSError as exc:  # the chain's RPC: an outage, not a verdict on the payment
            logger.warning("chain unreachable: %s: %s", type(exc).__name__, exc)
            return self._refuse(503, CHAIN_UNAVAILABLE, "the chain is unreachable", network)
        except Exception as exc:
            # Input the strict checks let through and the SDK could not handle: a refusal,
            # never a 500 (the traceback is for the operator).
            logger.exception("the SDK failed on a checked %s body", request.url.path)
            message = f"cannot process this payment: {type(exc).__name__}"
            return self._refuse(400, INVALID_PAYLOAD, message, network)
        return JSONResponse(result.model_dump(by_alias=True, exclude_none=True, mode="json"))


def create_facilitator_app(
    facilitator: x402FacilitatorSync,
    *,
    api_keys: ApiKeys | None,
    payees: PayeeAllowlist | None,
) -> Starlette:
    """The HTTP face of ``facilitator``: the routes an x402 resource server calls.

    ``api_keys`` guard ``/verify`` and ``/settle`` (``/supported`` and ``/health`` stay
    public); ``payees`` are the ``payTo`` addresses it serves. Both are required arguments:
    ``None`` (no auth, any payee) must be asked for, never fallen into.
    """
    verify = _PaymentEndpoint(facilitator.verify, _verify_refusal, api_keys=api_keys, payees=payees)
    settle = _PaymentEndpoint(facilitator.settle, _settle_refusal, api_keys=api_keys, payees=payees)

    async def supported(request: Request) -> Response:
        result = facilitator.get_supported()
        return JSONResponse(result.model_dump(by_alias=True, exclude_none=True, mode="json"))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/supported", supported, methods=["GET"]),
            Route("/verify", verify.handle, methods=["POST"]),
            Route("/settle", settle.handle, methods=["POST"]),
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
