"""A facilitator client that accepts every payment at once, in-process, with no chain.

For micro-benchmarks and unit tests of one component only (what the middleware itself costs,
what it does with an answer): every flow test goes through the real facilitator over HTTP
and the local chain. The addresses are the dev chain's well-known accounts.
"""

from __future__ import annotations

from typing import Any

from x402.schemas import SettleResponse, SupportedKind, SupportedResponse, VerifyResponse

from x402_meter.devstack.accounts import FACILITATOR, PAYERS
from x402_meter.facilitator import FacilitatorClient

DEV_NETWORK = "eip155:31337"
"""The local dev chain's network (anvil's default chain id)."""


class InstantFacilitator(FacilitatorClient):
    """Supports ``upto`` on ``network``, verifies every payment as the first dev payer's and
    settles it with a made-up transaction hash, without a round trip."""

    def __init__(self, network: str = DEV_NETWORK) -> None:
        super().__init__("http://instant-facilitator.invalid")
        self.network = network

    async def supported(self) -> SupportedResponse:
        kind = SupportedKind(
            x402_version=2,
            scheme="upto",
            network=self.network,
            extra={"facilitatorAddress": FACILITATOR.address},
        )
        return SupportedResponse(
            kinds=[kind], extensions=[], signers={"eip155:*": [FACILITATOR.address]}
        )

    async def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        return VerifyResponse(is_valid=True, payer=PAYERS[0].address)

    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        return SettleResponse(
            success=True,
            transaction="0x" + "ab" * 32,
            network=self.network,
            payer=PAYERS[0].address,
        )
