"""``upto``: authorize a maximum (Permit2), charge what was metered, capped at it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final

from x402.extensions.eip2612_gas_sponsoring import EIP2612_GAS_SPONSORING_KEY

from x402_meter.protocol.checks import check_upto_payload
from x402_meter.schemes.base import LocalCheck, PaymentScheme

if TYPE_CHECKING:
    from x402.schemas import PaymentRequirements

    from x402_meter.metering import Usage
    from x402_meter.pricing import Tariff
    from x402_meter.protocol.offer import Offer, PaymentTerms

PERMIT2_ALLOWANCE_REQUIRED: Final = "permit2_allowance_required"


class UptoScheme(PaymentScheme):
    name: ClassVar[str] = "upto"
    settles_before_response: ClassVar[bool] = False  # the charge waits on the whole body
    metered: ClassVar[bool] = True

    def offer_extra(self, terms: PaymentTerms, kind_extra: Mapping[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {"assetTransferMethod": "permit2"}
        facilitator_address = kind_extra.get("facilitatorAddress")
        if facilitator_address:
            extra["facilitatorAddress"] = str(facilitator_address)
        return extra

    def gas_sponsoring(self, terms: PaymentTerms, facilitator_extensions: frozenset[str]) -> bool:
        return terms.asset.eip2612 and EIP2612_GAS_SPONSORING_KEY in facilitator_extensions

    def check(
        self, body: dict[str, Any], requirements: PaymentRequirements, offer: Offer, now: int
    ) -> LocalCheck:
        return LocalCheck._make(check_upto_payload(body, requirements, offer, now))

    def refusal_status(self, reason: str) -> int:
        # The spec's answer for a wallet that has not approved Permit2 (and sent no
        # gas-sponsoring permit): 412, so the client knows to approve or sign one.
        return 412 if reason == PERMIT2_ALLOWANCE_REQUIRED else 402

    def charge(self, tariff: Tariff, usage: Usage, max_amount: int) -> int:
        metered = tariff.charge(usage.input_tokens, usage.output_tokens, usage.cached_input_tokens)
        return min(metered, max_amount)
