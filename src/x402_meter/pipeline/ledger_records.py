"""The ledger row of one paid request: written when verified, at checkpoints, when charged."""

from __future__ import annotations

import secrets
import time
from typing import Any

from x402_meter.metering import Usage
from x402_meter.pipeline.admission import Admitted
from x402_meter.settlement import Settler
from x402_meter.store import LedgerState, PaymentRecord, PaymentStore


def usage_source(usage: Usage) -> str:
    """How the ledger records where the counts came from, per side."""
    return f"input={usage.input_source},output={usage.output_source}"


class LedgerRecords:
    """Keeps the request's row: what it was authorized, what it has counted, what it owes."""

    def __init__(self, store: PaymentStore, settler: Settler, admitted: Admitted) -> None:
        self.store = store
        self.settler = settler
        self.admitted = admitted
        authorization, terms = admitted.authorization, admitted.offer.terms
        now = time.time()
        self.record = PaymentRecord(
            receipt_id=admitted.scheme.receipt_id(authorization) or secrets.token_urlsafe(18),
            key=authorization.key,
            state=LedgerState.VERIFIED,
            scheme=authorization.scheme,
            network=terms.network,
            asset=terms.asset.address,
            payer=authorization.payer,
            pay_to=terms.pay_to,
            max_amount=authorization.max_amount,
            transaction=admitted.scheme.admitted_transaction(authorization),
            x402_version=authorization.version,
            payload_json=authorization.payload.model_dump_json(by_alias=True, exclude_none=True),
            requirements_json=admitted.offer.json_of(authorization.requirements),
            created_at=now,
            updated_at=now,
            lease_owner=settler.owner,
            lease_until=now + settler.retry.lease_seconds,
        )
        """The row as last written (or about to be)."""

    @property
    def receipt_id(self) -> str:
        return self.record.receipt_id

    async def verified(self) -> None:
        """Durable before the first byte goes out: a payment that was verified is never lost."""
        await self.store.save(self.record)
        self.settler.serving(self.record.receipt_id)

    async def checkpoint(self, usage: Usage | None, served: bool) -> None:
        """Record the running count and charge, and extend this server's lease on the row."""
        until = time.time() + self.settler.retry.lease_seconds
        if usage is not None:
            self.record = self._counted(usage, served, lease_until=until)
        else:
            self.record = self.record.replace(lease_until=until, updated_at=time.time())
        await self.store.save(self.record)

    async def charged(self, usage: Usage, served: bool) -> PaymentRecord:
        """The final count and charge, to settle."""
        self.record = self._counted(usage, served, state=LedgerState.TO_SETTLE)
        await self.store.save(self.record)
        return self.record

    def _counted(self, usage: Usage, served: bool, **changes: Any) -> PaymentRecord:
        return self.record.replace(
            amount=self._amount(usage, served),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            usage_source=usage_source(usage),
            updated_at=time.time(),
            **changes,
        )

    def _amount(self, usage: Usage, served: bool) -> int:
        if not served:
            return 0  # the app failed: nothing was served
        admitted = self.admitted
        tariff = admitted.offer.terms.tariff
        return admitted.scheme.charge(tariff, usage, admitted.authorization.max_amount)
