"""What differs between payment schemes, behind one interface: ``PaymentScheme``.

The pipeline (``x402_meter.pipeline``) names no scheme: it asks the payment's scheme what to
offer, how to check a payload locally, how to admit it, what to charge, whether to settle
before answering, how to settle, and what the answer tells the client.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from x402.schemas import SettleResponse

from x402_meter.protocol.headers import (
    PAYMENT_RESPONSE,
    X_PAYMENT_RESPONSE,
    settle_response_header,
)
from x402_meter.protocol.offer import v1_network_name
from x402_meter.store import LedgerState, PaymentRecord

if TYPE_CHECKING:
    from x402.schemas import PaymentRequirements

    from x402_meter.facilitator import FacilitatorClient
    from x402_meter.metering import Usage
    from x402_meter.pricing import Tariff
    from x402_meter.protocol.checks import Authorization
    from x402_meter.protocol.offer import Offer, PaymentTerms
    from x402_meter.settlement import Settler

Header = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a payment was not admitted: a machine-readable reason, a message, an HTTP status."""

    reason: str
    message: str
    status: int = 402
    extra: Mapping[str, Any] | None = None
    """Added to the refused scheme's requirements in the 402 (a channel's corrective 402
    carries the server's channel state this way)."""


class LocalCheck(NamedTuple):
    """What a scheme's local checks read from a payload: who pays, until when, under which
    single-use key (a second request with the same key is a replay)."""

    payer: str
    expires_at: int
    key: str


class PaymentScheme(ABC):
    """One way to pay: the parts of a paid request that depend on how it is paid.

    The defaults are those of the facilitator-settled schemes (``exact``, ``upto``): admitted
    by the facilitator's ``/verify``, charged by its ``/settle``.
    """

    name: ClassVar[str]
    settles_before_response: ClassVar[bool]
    """Whether a non-streamed answer is held until settled when ``settle_before_response``
    is ``None``: worth it where the charge is known before the answer is."""
    metered: ClassVar[bool]
    """Whether the charge follows the count (so the count can reach the authorized maximum
    and ``on_cap="end"`` watches it), or is flat."""
    reserves_keys: ClassVar[bool] = True
    """Whether admission reserves the payment's key in the store (single-use authorizations);
    a scheme that serialises its payments itself (a channel's lock) says no."""
    settles_zero_charges: ClassVar[bool] = False
    """Whether a charge of nothing still goes through ``settle_charge`` (a channel's lock is
    released there); otherwise it is ``not_charged`` without a call."""
    ends_streams_once_charged: ClassVar[bool] = False
    """Whether a streamed answer's end (the body's last, empty chunk) waits for its charge:
    a client that has read the whole answer may then pay the next at once, on any server
    sharing the store (a channel is free by then). The content is not held back."""

    # -- what is offered ---------------------------------------------------------------------

    def offer_extra(self, terms: PaymentTerms, kind_extra: Mapping[str, Any]) -> dict[str, Any]:
        """What this scheme adds to the requirements' ``extra`` (beyond the token's name and
        version); ``kind_extra`` is what the facilitator's ``/supported`` says of the scheme
        on this network.

        Raises ``FacilitatorUnavailableError`` when the facilitator's answer lacks what the
        offer needs (nothing can be offered then).
        """
        return {}

    def gas_sponsoring(self, terms: PaymentTerms, facilitator_extensions: frozenset[str]) -> bool:
        """Whether offering this scheme advertises the ``eip2612GasSponsoring`` extension."""
        return False

    # -- admission ---------------------------------------------------------------------------

    @abstractmethod
    def check(
        self, body: dict[str, Any], requirements: PaymentRequirements, offer: Offer, now: int
    ) -> LocalCheck:
        """Check the payload's scheme-specific body against the server's own requirements;
        raise ``PaymentError`` with a reason if it fails."""

    async def admit(
        self, authorization: Authorization, facilitator: FacilitatorClient
    ) -> Refusal | None:
        """Have the payment verified (by the facilitator); ``None``: admitted.

        Raises ``FacilitatorUnavailableError`` when nobody could say.
        """
        verified = await facilitator.verify(authorization.payload, authorization.requirements)
        if verified.is_valid:
            return None
        reason = verified.invalid_reason or "payment_invalid"
        return Refusal(reason, verified.invalid_message or reason, self.refusal_status(reason))

    def refusal_status(self, reason: str) -> int:
        """The HTTP status of a verification refused for ``reason``."""
        return 402

    async def recheck(
        self, authorization: Authorization, facilitator: FacilitatorClient
    ) -> Refusal | None:
        """While the answer streams: would the payment still settle? ``None``: yes."""
        return await self.admit(authorization, facilitator)

    # -- the charge and its settlement -------------------------------------------------------

    def receipt_id(self, authorization: Authorization) -> str | None:
        """The receipt id the payment's ledger row must have (None: a random one): a scheme
        whose state names a request by its key can then find that request's row."""
        return None

    def admitted_transaction(self, authorization: Authorization) -> str | None:
        """A transaction admission already put on chain for the payment (a channel's
        deposit), which its ledger row carries from the start; None: none."""
        return None

    async def unserved(self, authorization: Authorization) -> None:  # noqa: B027 - optional hook
        """The admitted payment will not be served (its ledger row could not be written):
        give back what admission took that would otherwise wait for a lease to run out."""

    def answer_ended(self, authorization: Authorization) -> None:  # noqa: B027 - optional hook
        """The answer is over and its charge comes next (a channel lets a request that waits
        on it know that it will be free in a moment)."""

    def charge_unrecorded(self, authorization: Authorization) -> None:  # noqa: B027 - optional hook
        """The charge ``answer_ended`` announced will not be settled now: its ledger write
        failed (the row is left to the sweeper)."""

    @abstractmethod
    def charge(self, tariff: Tariff, usage: Usage, max_amount: int) -> int:
        """What a served answer costs, in atomic units, never more than ``max_amount``."""

    async def settle_now(self, record: PaymentRecord, settler: Settler) -> PaymentRecord:
        """Settle a charge before the answer goes out (one attempt; the sweeper retries)."""
        return await settler.settle(record, attempts=1)

    async def settle_later(self, record: PaymentRecord, settler: Settler) -> None:
        """Settle a charge after the answer: in the background (the request is not held)."""
        settler.submit(record)

    async def settle_charge(
        self, record: PaymentRecord, facilitator: FacilitatorClient
    ) -> SettleResponse:
        """One settlement attempt of a charged row, as the ``Settler`` makes it: the
        facilitator's ``/settle`` with the row's payload and the server's requirements at
        the charged amount. Raises ``FacilitatorUnavailableError`` for a transient failure."""
        from x402_meter.settlement import settle_by_facilitator  # settlement builds on schemes

        return await settle_by_facilitator(record, facilitator)

    def receipt_extra(self, record: PaymentRecord) -> dict[str, Any]:
        """What this scheme adds to a row's receipt body."""
        return {}

    async def response_headers(self, settled: PaymentRecord) -> list[Header]:
        """What an answer held until settled tells the client: the x402 settle response,
        when a settlement happened (not for a charge of nothing)."""
        if settled.state is not LedgerState.SETTLED:
            return []
        v2 = settled.x402_version == 2
        result = SettleResponse(
            success=True,
            transaction=settled.transaction or "",
            network=settled.network if v2 else v1_network_name(settled.network),
            payer=settled.payer,
            amount=str(settled.amount or 0),
        )
        name = PAYMENT_RESPONSE if v2 else X_PAYMENT_RESPONSE
        return [(name.encode(), settle_response_header(result))]
