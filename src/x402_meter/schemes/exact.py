"""``exact``: a flat price (EIP-3009), the authorized amount is the charge."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from x402_meter.protocol.checks import check_exact_payload
from x402_meter.protocol.offer import EIP3009_PRIMARY_TYPE
from x402_meter.schemes.base import LocalCheck, PaymentScheme

if TYPE_CHECKING:
    from x402.schemas import PaymentRequirements

    from x402_meter.metering import Usage
    from x402_meter.pricing import Tariff
    from x402_meter.protocol.offer import Offer, PaymentTerms


class ExactScheme(PaymentScheme):
    name: ClassVar[str] = "exact"
    # Its flat amount is known before the answer is: settling first costs the payer nothing
    # and protects the seller (as the x402 SDK's servers do).
    settles_before_response: ClassVar[bool] = True
    metered: ClassVar[bool] = False

    def offer_extra(self, terms: PaymentTerms, kind_extra: Mapping[str, Any]) -> dict[str, Any]:
        return {"primaryType": EIP3009_PRIMARY_TYPE} if terms.asset.eip3009 else {}

    def check(
        self, body: dict[str, Any], requirements: PaymentRequirements, offer: Offer, now: int
    ) -> LocalCheck:
        return LocalCheck._make(check_exact_payload(body, requirements, now))

    def charge(self, tariff: Tariff, usage: Usage, max_amount: int) -> int:
        return max_amount  # a flat price
