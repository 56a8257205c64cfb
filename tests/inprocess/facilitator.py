"""A facilitator in this process: x402's HTTP API as an ASGI app, with switches for tests.

``X402Meter`` reaches it the way it reaches any facilitator, over HTTP through its own
``FacilitatorClient``, only the transport is ``httpx.ASGITransport``: the meter's client code,
the bodies' shapes (the SDK's ``SupportedResponse``, ``VerifyResponse``, ``SettleResponse``)
and the status codes all take part, and no chain is needed. It checks no signature: the
chain-backed tests prove that real payments verify and settle; this tier proves what the
middleware does with each answer, in seconds. For ``batch-settlement`` it keeps a ledger of
channels in place of the chain (``channels``): a deposit's settle credits it, a verify
reports it, as the spec has a facilitator do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from x402.mechanisms.evm.batch_settlement.errors import ERR_CLAIM_TRANSACTION_FAILED
from x402.schemas import SettleResponse, SupportedKind, SupportedResponse, VerifyResponse

from x402_meter.devstack.accounts import FACILITATOR
from x402_meter.facilitator import FacilitatorClient

NETWORK: Final = "eip155:84532"
URL: Final = "http://facilitator.test"
TRANSACTION: Final = "0x" + "ab" * 32
RECEIVER_AUTHORIZER: Final = FACILITATOR.address
"""The ``receiverAuthorizer`` it advertises for ``batch-settlement``."""
SESSIONS: Final = "batch-settlement"


@dataclass
class Channel:
    """A channel as the chain would keep it."""

    balance: int = 0
    total_claimed: int = 0
    withdraw_requested_at: int = 0

    def snapshot(self, channel_id: str) -> dict[str, Any]:
        return {
            "channelId": channel_id,
            "balance": str(self.balance),
            "totalClaimed": str(self.total_claimed),
            "withdrawRequestedAt": self.withdraw_requested_at,
            "refundNonce": "0",
        }


@dataclass
class Settled:
    """One ``/settle`` call: who paid, how much the server asked to charge."""

    payer: str | None
    amount: int
    scheme: str


@dataclass
class Refusal:
    reason: str
    message: str = "refused by the in-process facilitator"


@dataclass
class InProcessFacilitator:
    """Answers ``/supported``, ``/verify`` and ``/settle``; a test sets the switches."""

    verify_refusal: Refusal | None = None
    """``/verify`` answers ``isValid: false`` with this reason (None: valid)."""
    settle_refusal: Refusal | None = None
    """``/settle`` answers ``success: false`` with this reason (None: settled)."""
    unreachable: bool = False
    """Every call fails to connect, as a facilitator that is down."""
    verify_unreachable: bool = False
    """``/verify`` calls fail to connect (``/settle`` still answers): down while answers
    stream, back for their settlements."""
    verify_status: int | None = None
    """``/verify`` answers with this HTTP status and no verdict (a facilitator in trouble)."""
    verify_gate: anyio.Event | None = None
    """``/verify`` waits for this event before answering (a slow facilitator)."""
    settle_gate: anyio.Event | None = None
    """``/settle`` waits for this event before answering (a settlement still in flight)."""
    verified: list[dict[str, Any]] = field(default_factory=list)
    """The bodies ``/verify`` was sent, in order."""
    verify_called: anyio.Event = field(default_factory=anyio.Event)
    """Set by the next ``/verify`` call (then replaced): see ``verify_calls``."""
    verifying: int = 0
    """``/verify`` calls in flight."""
    most_verifying: int = 0
    """The most ``/verify`` calls that were ever in flight at once."""
    settled: list[Settled] = field(default_factory=list)
    settle_started: anyio.Event = field(default_factory=anyio.Event)
    channels: dict[str, Channel] = field(default_factory=dict)
    """``batch-settlement`` channels by id (lower case), in place of the chain."""
    calls: list[str] = field(default_factory=list)
    """The path of every call, in order (but a claims worker's: ``claim_calls``)."""
    claim_calls: int = 0
    """``/settle`` calls of a claims worker (claims, sweeps): not modelled here, answered
    as a failed transaction, which the worker retries later. Kept out of ``calls``: the
    worker's first pass runs when it starts, wherever that falls among the requests."""

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/supported", self._supported, methods=["GET"]),
                Route("/verify", self._verify, methods=["POST"]),
                Route("/settle", self._settle, methods=["POST"]),
            ]
        )

    def client(self) -> FacilitatorClient:
        """What ``X402Meter(facilitator=...)`` is given: the meter's own client, in process."""
        return FacilitatorClient(URL, transport=_Switchable(self))

    async def _supported(self, request: Request) -> JSONResponse:
        kinds = [
            SupportedKind(
                x402_version=2,
                scheme="upto",
                network=NETWORK,
                extra={"facilitatorAddress": FACILITATOR.address},
            ),
            SupportedKind(x402_version=2, scheme="exact", network=NETWORK),
            SupportedKind(
                x402_version=2,
                scheme=SESSIONS,
                network=NETWORK,
                extra={"receiverAuthorizer": RECEIVER_AUTHORIZER},
            ),
        ]
        answer = SupportedResponse(
            kinds=kinds, extensions=[], signers={"eip155:*": [FACILITATOR.address]}
        )
        return _json(answer)

    async def verify_calls(self, count: int) -> None:
        """Wait until ``/verify`` has been called ``count`` times (or more)."""
        while len(self.verified) < count:
            await self.verify_called.wait()

    async def _verify(self, request: Request) -> Response:
        body = await request.json()
        self.calls.append("/verify")
        self.verified.append(body)
        called, self.verify_called = self.verify_called, anyio.Event()
        called.set()
        self.verifying += 1
        self.most_verifying = max(self.most_verifying, self.verifying)
        try:
            if self.verify_gate is not None:
                await self.verify_gate.wait()
        finally:
            self.verifying -= 1
        if self.verify_status is not None:
            return PlainTextResponse("facilitator trouble", status_code=self.verify_status)
        payer = _payer(body)
        if self.verify_refusal is not None:
            refusal = self.verify_refusal
            return _json(
                VerifyResponse(
                    is_valid=False,
                    invalid_reason=refusal.reason,
                    invalid_message=refusal.message,
                    payer=payer,
                )
            )
        if body["paymentRequirements"]["scheme"] == SESSIONS:
            return _json(self._verify_channel(body["paymentPayload"]["payload"], payer))
        return _json(VerifyResponse(is_valid=True, payer=payer))

    def _verify_channel(self, inner: dict[str, Any], payer: str | None) -> VerifyResponse:
        """A deposit or voucher: valid, with its channel as the chain has it now; a voucher
        on a channel with no balance is ``channel_not_found``."""
        channel_id = str(inner["voucher"]["channelId"]).lower()
        channel = self.channels.get(channel_id, Channel())
        if inner["type"] == "voucher" and channel.balance == 0:
            return VerifyResponse(
                is_valid=False,
                invalid_reason="invalid_batch_settlement_evm_channel_not_found",
                payer=payer,
            )
        return VerifyResponse(is_valid=True, payer=payer, extra=channel.snapshot(channel_id))

    async def _settle(self, request: Request) -> JSONResponse:
        body = await request.json()
        if body["paymentPayload"]["payload"].get("type") in ("claim", "settle"):
            self.claim_calls += 1
            answer = SettleResponse(
                success=False,
                error_reason=ERR_CLAIM_TRANSACTION_FAILED,
                error_message="the in-process facilitator has no chain to claim on",
                transaction="",
                network=body["paymentRequirements"]["network"],
            )
            return _json(answer)
        self.calls.append("/settle")
        self.settle_started.set()
        if self.settle_gate is not None:
            await self.settle_gate.wait()
        requirements = body["paymentRequirements"]
        payer = _payer(body)
        if self.settle_refusal is not None:
            refusal = self.settle_refusal
            answer = SettleResponse(
                success=False,
                error_reason=refusal.reason,
                error_message=refusal.message,
                payer=payer,
                transaction="",
                network=requirements["network"],
            )
            return _json(answer)
        amount = int(requirements["amount"])
        extra = None
        if requirements["scheme"] == SESSIONS:  # a deposit: the chain credits the channel
            inner = body["paymentPayload"]["payload"]
            channel_id = str(inner["voucher"]["channelId"]).lower()
            channel = self.channels.setdefault(channel_id, Channel())
            amount = int(inner["deposit"]["amount"])
            channel.balance += amount
            extra = {"channelState": channel.snapshot(channel_id)}
        self.settled.append(Settled(payer, amount, requirements["scheme"]))
        answer = SettleResponse(
            success=True,
            payer=payer,
            transaction=TRANSACTION,
            network=requirements["network"],
            amount=str(amount),
            extra=extra,
        )
        return _json(answer)


class _Switchable(httpx.AsyncBaseTransport):
    """The facilitator's app over ``ASGITransport``, or a refused connection when it is down."""

    def __init__(self, facilitator: InProcessFacilitator) -> None:
        self.facilitator = facilitator
        self.transport = httpx.ASGITransport(app=facilitator.app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        facilitator = self.facilitator
        if facilitator.unreachable or (
            facilitator.verify_unreachable and request.url.path == "/verify"
        ):
            raise httpx.ConnectError("connection refused (in-process facilitator down)")
        return await self.transport.handle_async_request(request)


def _payer(body: dict[str, Any]) -> str | None:
    """The payer named by a payload (upto: the permit's owner; exact: the authorizer;
    batch-settlement: the channel's payer)."""
    inner = body["paymentPayload"]["payload"]
    for key in ("permit2Authorization", "authorization"):
        if key in inner:
            return str(inner[key]["from"])
    if "channelConfig" in inner:
        return str(inner["channelConfig"]["payer"])
    return None


def _json(model: SupportedResponse | VerifyResponse | SettleResponse) -> JSONResponse:
    return JSONResponse(model.model_dump(by_alias=True, exclude_none=True, mode="json"))
