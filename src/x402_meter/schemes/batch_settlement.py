"""``batch-settlement``: sessions. Deposit once into a payment channel, then pay each answer
with a cumulative voucher that this server checks itself; each answer is charged its metered
cost, at most the voucher's increment, in the channel store. ``docs/design/sessions.md``
says how a request goes; the claims of the charged vouchers are batched off the request
path (the next part of issue 17).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final

import anyio.to_thread
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.constants import (
    MAX_WITHDRAW_DELAY,
    MIN_WITHDRAW_DELAY,
    SCHEME_BATCH_SETTLEMENT,
)
from x402.mechanisms.evm.batch_settlement.errors import (
    ERR_CHARGE_EXCEEDS_SIGNED_CUMULATIVE,
    ERR_INVALID_VOUCHER_SIGNATURE,
    ERR_MISSING_CHANNEL,
)
from x402.mechanisms.evm.batch_settlement.types import AuthorizerSigner
from x402.mechanisms.evm.utils import get_evm_chain_id
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

from x402_meter.errors import ChargeUnavailableError, FacilitatorUnavailableError, PaymentError
from x402_meter.metrics import SessionMetrics
from x402_meter.protocol.headers import PAYMENT_RESPONSE, settle_response_header
from x402_meter.schemes.base import Header, LocalCheck, PaymentScheme, Refusal
from x402_meter.schemes.channel_admission import ChannelAdmission
from x402_meter.schemes.channel_payload import (
    ChannelPayment,
    read_channel_payment,
    read_channel_refund,
)
from x402_meter.schemes.channel_refund import ChannelRefund
from x402_meter.schemes.channel_state import (
    ChainSnapshot,
    ChargingChannels,
    DepositTransactions,
    RecentChannels,
    channel_state,
)
from x402_meter.schemes.channel_terms import ChannelTerms
from x402_meter.schemes.voucher_signature import VoucherSignatures
from x402_meter.store import (
    ChannelRecord,
    ChannelStore,
    LedgerState,
    PaymentRecord,
    PaymentStore,
)

if TYPE_CHECKING:
    from x402_meter.facilitator import FacilitatorClient
    from x402_meter.metering import Usage
    from x402_meter.pricing import Tariff
    from x402_meter.protocol.checks import Authorization
    from x402_meter.protocol.offer import Offer, PaymentTerms
    from x402_meter.settlement import Settler

logger = logging.getLogger("x402_meter")

_ADDRESS: Final = re.compile(r"0x[0-9a-fA-F]{40}")
CHANNEL_LOCK_LOST: Final = "channel_lock_lost"
DEFAULT_DEPOSIT_MULTIPLE: Final = 10
"""``minDeposit`` is this many times a request's maximum by default (as the SDK's server)."""
CHARGE_ATTEMPTS: Final = 5
"""Compare-and-set attempts of one charge before the settlement worker retries it later."""


def default_state_ttl(withdraw_delay: int) -> float:
    """How long a channel's mirror is trusted by default: a third of the withdraw delay,
    between 30 s and 5 min (the SDK's rule): a withdrawal requested just after a read is
    seen long before it can be finalized."""
    return float(min(300, max(30, withdraw_delay // 3)))


class BatchSettlementScheme(PaymentScheme):
    """Sessions on payment channels, with one meter's channel store."""

    name: ClassVar[str] = SCHEME_BATCH_SETTLEMENT
    # The charge is local (a write to the channel store): a non-streamed answer is held for
    # it and carries PAYMENT-RESPONSE, from which the SDK's client signs its next voucher.
    settles_before_response: ClassVar[bool] = True
    metered: ClassVar[bool] = True
    reserves_keys: ClassVar[bool] = False  # the channel's lock serialises its requests
    settles_zero_charges: ClassVar[bool] = True  # a charge of nothing still frees the channel
    # A client that read a streamed answer to its end finds its channel free: on this server
    # or another one sharing the channel store (which could not tell an answer being charged
    # from one still running, and would refuse the next voucher as busy).
    ends_streams_once_charged: ClassVar[bool] = True

    def __init__(
        self,
        channels: ChannelStore,
        *,
        withdraw_delay: int = MIN_WITHDRAW_DELAY,
        deposit_multiple: int = DEFAULT_DEPOSIT_MULTIPLE,
        state_ttl: float | None = None,
        receiver_authorizer: str | None = None,
        authorizer: AuthorizerSigner | None = None,
        metrics: SessionMetrics | None = None,
        ledger: PaymentStore | None = None,
    ) -> None:
        """``receiver_authorizer``: the address that authorizes claims and refunds of this
        seller's channels (None: the one the facilitator advertises); ``authorizer``: the
        seller's key for that address, which signs its refunds (None: the facilitator
        signs); ``metrics`` is told each deposit, admitted voucher, refusal and charge;
        ``ledger``: the meter's payment store, where the request holding a channel has its
        row."""
        if not MIN_WITHDRAW_DELAY <= withdraw_delay <= MAX_WITHDRAW_DELAY:
            raise ValueError(f"withdraw_delay must be {MIN_WITHDRAW_DELAY}..{MAX_WITHDRAW_DELAY} s")
        self.channels = channels
        self.withdraw_delay = withdraw_delay
        self.deposit_multiple = deposit_multiple
        self.state_ttl = default_state_ttl(withdraw_delay) if state_ttl is None else state_ttl
        """Seconds a channel's mirror of the chain is trusted for local admission."""
        self.receiver_authorizer = receiver_authorizer
        self.authorizer = authorizer
        self.metrics = metrics
        self.ledger = ledger
        self.charging = ChargingChannels()
        self.recent = RecentChannels()
        """Each channel's record as this process last read or wrote it: a voucher on a
        channel only this process serves is admitted, and charged, with no store read."""
        self.deposits = DepositTransactions()
        """The deposit transactions admissions settled, until their requests' rows take them."""
        self.terms = ChannelTerms()
        """The channel configs whose binding and terms were checked (an LRU)."""
        self.signatures = VoucherSignatures()
        self.on_withdrawal: Callable[[str], None] = _ignore
        """Told the id of a channel whose mirror now shows a withdrawal requested (the
        claims worker claims it at once)."""
        self.on_refunded: Callable[[ChannelRecord], None] = _ignore
        """Told of a channel whose charges a refund has just claimed (the claims worker
        sweeps them to ``payTo``)."""

    # -- what is offered ---------------------------------------------------------------------

    def offer_extra(self, terms: PaymentTerms, kind_extra: Mapping[str, Any]) -> dict[str, Any]:
        authorizer = self.receiver_authorizer or kind_extra.get("receiverAuthorizer")
        if (
            not isinstance(authorizer, str)
            or not _ADDRESS.fullmatch(authorizer)
            or int(authorizer, 16) == 0
        ):
            raise FacilitatorUnavailableError(
                f"the facilitator advertises no receiverAuthorizer for {self.name} on"
                f" {terms.network}, and no session_receiver_authorizer is configured"
            )
        return {
            "receiverAuthorizer": Web3.to_checksum_address(authorizer),
            "withdrawDelay": self.withdraw_delay,
            "minDeposit": str(terms.tariff.max_amount * self.deposit_multiple),
            "assetTransferMethod": "eip3009" if terms.asset.eip3009 else "permit2",
        }

    # -- admission ---------------------------------------------------------------------------

    def check(
        self, body: dict[str, Any], requirements: PaymentRequirements, offer: Offer, now: int
    ) -> LocalCheck:
        try:
            payment = read_channel_payment(body)
            self.terms.check(payment, requirements)
        except PaymentError as exc:  # a malformed payload, or a channel not this server's
            if self.metrics is not None:
                self.metrics.session_refused(exc.reason)
            raise
        # The key names the request's hold on its channel: the channel, the cumulative it
        # pays up to, and a random part (two copies of one voucher are two requests; the
        # channel's lock admits one, its cumulative refuses the other afterwards), which is
        # also the receipt id of its ledger row: the channel's holder can be looked up.
        key = (
            f"{self.name}:{requirements.network}:{payment.channel_id}:{payment.cumulative}:"
            f"{secrets.token_urlsafe(18)}"
        )
        return LocalCheck(payment.payer, now + requirements.max_timeout_seconds, key)

    async def admit(
        self, authorization: Authorization, facilitator: FacilitatorClient
    ) -> Refusal | None:
        payload, requirements = authorization.payload, authorization.requirements
        if not isinstance(payload, PaymentPayload) or not isinstance(
            requirements, PaymentRequirements
        ):
            return Refusal("unsupported_scheme", f"{self.name} is paid with x402 version 2")
        payment = read_channel_payment(payload.payload)
        try:
            await self.check_signature(payment, str(requirements.network))
        except PaymentError as exc:
            return self._refused(Refusal(exc.reason, exc.message, exc.status_code))
        admission = ChannelAdmission(
            self,
            payment,
            payload,
            requirements,
            key=authorization.key,
            maximum=authorization.max_amount,
            until=float(authorization.expires_at),
        )
        refusal = await admission.run(facilitator)
        if refusal is not None:
            return self._refused(refusal)
        if self.metrics is not None and payment.kind == "voucher":
            self.metrics.session_voucher("facilitator" if admission.asked_facilitator else "local")
        return None

    async def check_signature(self, payment: ChannelPayment, network: str) -> None:
        """``PaymentError`` unless the voucher is signed by the config's ``payerAuthorizer``
        in the form the contract accepts. A contract wallet's voucher is left to the
        facilitator (EIP-1271 needs the chain).

        With coincurve the check takes about 0.15 ms: on the event loop, where a hop to a
        worker thread and back would cost as much and wait longer under load. Without it
        (eth-keys' pure Python, milliseconds) it runs on a worker thread."""
        if payment.contract_wallet:
            return
        signed = (
            payment.config.payer_authorizer,
            payment.channel_id,
            payment.cumulative,
            payment.signature,
            get_evm_chain_id(network),
        )
        signatures = self.signatures
        if signatures.fast:
            valid = signatures.signed_by(*signed)
        else:
            valid = await anyio.to_thread.run_sync(signatures.signed_by, *signed)
        if not valid:
            raise PaymentError(
                ERR_INVALID_VOUCHER_SIGNATURE,
                "the voucher is not signed by the payer authorizer (in canonical form)",
            )

    def _refused(self, refusal: Refusal) -> Refusal:
        if self.metrics is not None:
            self.metrics.session_refused(refusal.reason)
        return refusal

    async def recheck(
        self, authorization: Authorization, facilitator: FacilitatorClient
    ) -> Refusal | None:
        """Nothing to re-check: the funds are in escrow, and a withdrawal takes longer than
        any answer (the withdraw delay)."""
        return None

    async def refund(
        self,
        payload: PaymentPayload,
        requirements: PaymentRequirements,
        facilitator: FacilitatorClient,
    ) -> Refusal | SettleResponse:
        """A payer's cooperative refund (``type: "refund"``): checked here (the payload,
        the channel's terms, the voucher's signature; ``PaymentError`` if not), then
        ``ChannelRefund`` holds the channel, claims what was charged and refunds the rest.

        Raises ``FacilitatorUnavailableError`` when the facilitator could not be asked."""
        request = read_channel_refund(payload.payload)
        self.terms.check(request.payment, requirements)
        network = str(requirements.network)
        await self.check_signature(request.payment, network)
        key = f"refund:{network}:{request.payment.channel_id}:{secrets.token_hex(8)}"
        until = time.time() + requirements.max_timeout_seconds
        refund = ChannelRefund(self, request, payload, requirements, key=key, until=until)
        outcome = await refund.run(facilitator)
        return self._refused(outcome) if isinstance(outcome, Refusal) else outcome

    def receipt_id(self, authorization: Authorization) -> str | None:
        return holder_receipt_id(authorization.key)

    def admitted_transaction(self, authorization: Authorization) -> str | None:
        # A deposit's: its answer names it (the row keeps it through the charge).
        return self.deposits.take(authorization.key)

    async def holder_unsettled(self, record: ChannelRecord) -> bool:
        """Whether the request named as the channel's holder has a ledger row not yet final
        (its server died, and no sweeper has charged it yet), whatever its lease says.
        Until that charge is made the channel is not free: a request taking it would start
        from a charged cumulative without it, and the charge would then be refused."""
        if record.serving is None or self.ledger is None:
            return False
        row = await self.ledger.get(holder_receipt_id(record.serving))
        return row is not None and row.key == record.serving and not row.state.is_final

    async def unserved(self, authorization: Authorization) -> None:
        """Free the channel this request took: with no ledger row, no sweeper would, and the
        channel would stay busy until the request's lease ran out (``max_timeout_seconds``).
        The store may be failing too: then the lease is what frees it."""
        self.deposits.take(authorization.key)
        channel_id = read_channel_payment(authorization.payload.payload).channel_id
        try:
            for _ in range(CHARGE_ATTEMPTS):
                current = await self.channels.get(channel_id)
                if current is None or current.serving != authorization.key:
                    return
                free = dataclasses.replace(current, serving=None, serving_until=0.0)
                if await self.channels.put(free) is not None:
                    return
        except Exception:
            logger.exception("channel %s stays held until its lease runs out", channel_id)

    # -- the charge ----------------------------------------------------------------------------

    def charge(self, tariff: Tariff, usage: Usage, max_amount: int) -> int:
        metered = tariff.charge(usage.input_tokens, usage.output_tokens, usage.cached_input_tokens)
        return min(metered, max_amount)  # the maximum is the voucher's increment

    def answer_ended(self, authorization: Authorization) -> None:
        self.charging.begin(read_channel_payment(authorization.payload.payload).channel_id)

    def charge_unrecorded(self, authorization: Authorization) -> None:
        # The channel stays held by the row (the sweeper charges it); requests that wait
        # for this process's charge of it are refused as busy now, not after their wait.
        self.charging.end(read_channel_payment(authorization.payload.payload).channel_id)

    async def settle_now(self, record: PaymentRecord, settler: Settler) -> PaymentRecord:
        return await self._charge_now(record, settler)

    async def settle_later(self, record: PaymentRecord, settler: Settler) -> None:
        # Not in the background: the charge is durable before the request is done.
        await self._charge_now(record, settler)

    async def _charge_now(self, record: PaymentRecord, settler: Settler) -> PaymentRecord:
        channel_id = _payment_of_row(record).channel_id
        try:
            return await settler.settle(record, attempts=1)
        finally:
            self.charging.end(channel_id)

    async def settle_charge(
        self, record: PaymentRecord, facilitator: FacilitatorClient
    ) -> SettleResponse:
        """Add the row's charge to its channel: the charged cumulative grows by it, the
        request's voucher (which covers the new cumulative) becomes the latest, and the
        channel is free. Done once per request (a retry finds it done)."""
        payment = _payment_of_row(record)
        amount = record.amount or 0
        channel_id = payment.channel_id
        # The record as this request's admission left it (no read), if it still shows the
        # request holding the channel: the compare-and-set below confirms it is current.
        known = self.recent.get(channel_id)
        current = known if known is not None and known.serving == record.key else None
        try:
            for _ in range(CHARGE_ATTEMPTS):
                hinted = current is not None
                if current is None:
                    current = await self.channels.get(channel_id)
                    self.recent.read(current)
                outcome = _charge_outcome(record, current, payment, amount)
                if outcome is not None:
                    if hinted:  # decided on the hint: never answered on it, read the store
                        current = None
                        continue
                    return outcome
                assert current is not None
                total = current.charged + amount
                changes: dict[str, Any] = {
                    "charged": total,
                    "serving": None,
                    "serving_until": 0.0,
                    "last_charged": record.key,
                }
                if amount:  # the voucher becomes the latest once it covers a charge
                    changes["voucher_max"] = payment.cumulative
                    changes["voucher_signature"] = payment.signature
                stored = await self.channels.put(dataclasses.replace(current, **changes))
                self.recent.wrote(stored)
                if stored is not None:
                    if self.metrics is not None:
                        self.metrics.session_charge(record.network, record.asset, amount)
                    return _charged(record, stored, amount)
                current = None  # written meanwhile (a claim's lease): read it again
        except Exception as exc:  # the store did not answer: the worker tries again later
            raise ChargeUnavailableError(f"channel store: {type(exc).__name__}: {exc}") from exc
        raise ChargeUnavailableError(f"channel {payment.channel_id} kept changing")

    # -- what the client is told ---------------------------------------------------------------

    async def response_headers(self, settled: PaymentRecord) -> list[Header]:
        if settled.state not in (LedgerState.SETTLED, LedgerState.NOT_CHARGED):
            return []
        payment = _payment_of_row(settled)
        # The mirror as this request's charge wrote it (no read), else as stored now.
        record = self.recent.get(payment.channel_id)
        if record is None or record.last_charged != settled.key:
            record = await self.channels.get(payment.channel_id)
        chain = ChainSnapshot.of(record) if record is not None else ChainSnapshot(0, 0, 0, 0)
        amount = settled.amount or 0
        result = SettleResponse(
            success=True,
            # The charge is in the channel, with no transaction of its own; a deposit's
            # answer names the deposit's (as the SDK's server does).
            transaction=settled.transaction or "",
            network=settled.network,
            payer=settled.payer,
            amount="",
            extra={
                "chargedAmount": str(amount),
                "channelState": channel_state(
                    payment.channel_id, chain, charged_after(settled, payment)
                ),
            },
        )
        return [(PAYMENT_RESPONSE.encode(), settle_response_header(result))]

    def receipt_extra(self, record: PaymentRecord) -> dict[str, Any]:
        payment = _payment_of_row(record)
        channel: dict[str, Any] = {"id": payment.channel_id}
        if record.state in (LedgerState.SETTLED, LedgerState.NOT_CHARGED):
            channel["charged_cumulative"] = str(charged_after(record, payment))
        return {"channel": channel}


def holder_receipt_id(key: str) -> str:
    """The receipt id of the ledger row of the request whose key is ``key``."""
    return key.rsplit(":", 1)[-1]


def _ignore(_: object) -> None:
    return None


def charged_after(record: PaymentRecord, payment: ChannelPayment) -> int:
    """The channel's charged cumulative once ``record`` was charged: the voucher was for the
    cumulative before it plus the request's maximum (admission checked it), so it is the
    voucher's amount less what was not charged of that maximum."""
    return payment.cumulative - record.max_amount + (record.amount or 0)


def _payment_of_row(record: PaymentRecord) -> ChannelPayment:
    return read_channel_payment(json.loads(record.payload_json)["payload"])


def _charge_outcome(
    record: PaymentRecord, current: ChannelRecord | None, payment: ChannelPayment, amount: int
) -> SettleResponse | None:
    """What a charge of ``record`` comes to without a write, on the channel as ``current``
    (None: it is to be written)."""
    if current is None:
        return _failed(record, ERR_MISSING_CHANNEL, "the channel has no record")
    if current.last_charged == record.key:
        return _charged(record, current, amount)  # done before: a retry
    if current.serving != record.key:
        return _failed(
            record,
            CHANNEL_LOCK_LOST,
            "another request took the channel before this charge was recorded",
        )
    total = current.charged + amount
    if total > payment.cumulative:
        return _failed(
            record,
            ERR_CHARGE_EXCEEDS_SIGNED_CUMULATIVE,
            f"{total} charged would exceed the voucher's {payment.cumulative}",
        )
    return None


def _charged(record: PaymentRecord, channel: ChannelRecord, amount: int) -> SettleResponse:
    return SettleResponse(
        success=True,
        transaction=record.transaction or "",  # a deposit's, kept by the settled row
        network=record.network,
        payer=record.payer,
        amount=str(amount),
        extra={"chargedAmount": str(amount), "chargedCumulativeAmount": str(channel.charged)},
    )


def _failed(record: PaymentRecord, reason: str, message: str) -> SettleResponse:
    return SettleResponse(
        success=False,
        error_reason=reason,
        error_message=message,
        transaction="",
        network=record.network,
        payer=record.payer,
    )


__all__ = ["BatchSettlementScheme", "charged_after", "default_state_ttl"]
