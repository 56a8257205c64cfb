"""What a metered route asks for: payment terms, compiled once into x402 requirements."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from x402.extensions.eip2612_gas_sponsoring import (
    declare_eip2612_gas_sponsoring_extension,
)
from x402.mechanisms.evm.v1.constants import V1_NETWORK_CHAIN_IDS
from x402.schemas import PaymentRequired, PaymentRequirements, ResourceInfo
from x402.schemas.v1 import PaymentRequirementsV1

from x402_meter.assets import Asset
from x402_meter.pricing import Tariff

if TYPE_CHECKING:
    from x402_meter.schemes import PaymentScheme

Scheme = Literal["upto", "exact", "batch-settlement"]
SCHEMES: Final[frozenset[str]] = frozenset({"upto", "exact", "batch-settlement"})

_V1_NAMES: Final = {f"eip155:{chain_id}": name for name, chain_id in V1_NETWORK_CHAIN_IDS.items()}
DEFAULT_MIME_TYPE: Final = "application/json"
EIP3009_PRIMARY_TYPE: Final = "TransferWithAuthorization"
"""``extra.primaryType`` of an ``exact`` requirement paid by EIP-3009 (thirdweb's client
reads it to choose how to sign; without it, it looks the token's ABI up online)."""


def v1_network_name(network: str) -> str:
    """The legacy (v1) name of a CAIP-2 network, or the CAIP-2 id where it has none."""
    return _V1_NAMES.get(network, network)


@dataclass(frozen=True, slots=True)
class PaymentTerms:
    """How one metered route is paid: where to, in what, at what price, by which schemes."""

    network: str
    asset: Asset
    pay_to: str
    tariff: Tariff
    schemes: tuple[Scheme, ...] = ("upto",)
    max_timeout_seconds: int = 300
    description: str | None = None
    mime_type: str = DEFAULT_MIME_TYPE
    """What the route answers with, as x402 v1's required ``mimeType`` says it."""


@dataclass(frozen=True, slots=True)
class Offer:
    """The requirements of one route, ready to send in a 402 and to check payments against."""

    terms: PaymentTerms
    requirements: tuple[PaymentRequirements, ...]
    facilitator_signers: frozenset[str] = field(default_factory=frozenset)
    """Lower-cased addresses allowed as the upto witness's ``facilitator``."""
    gas_sponsoring: bool = False
    """Advertise ``eip2612GasSponsoring``: the facilitator supports it and the asset has permit."""
    requirements_json: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """Each of ``requirements`` as the ledger keeps it: serialized once per offer (made
    again with it by ``dataclasses.replace``), not once per payment (``json_of``)."""

    def __post_init__(self) -> None:
        serialized = tuple(ledger_json(r) for r in self.requirements)
        object.__setattr__(self, "requirements_json", serialized)

    @classmethod
    def build(
        cls,
        terms: PaymentTerms,
        *,
        kind_extras: Mapping[str, Mapping[str, Any]],
        facilitator_signers: frozenset[str],
        facilitator_extensions: frozenset[str] = frozenset(),
        schemes: Mapping[str, PaymentScheme] | None = None,
    ) -> Offer:
        """``kind_extras``: what the facilitator's ``/supported`` says of each scheme on the
        network (its ``extra``); ``schemes``: the implementations (default: the built-in
        stateless ones)."""
        if schemes is None:
            from x402_meter.schemes import BUILT_IN  # the schemes build on this module

            schemes = BUILT_IN
        base_extra: dict[str, Any] = {"name": terms.asset.name, "version": terms.asset.version}
        requirements = []
        for name in terms.schemes:
            offered = schemes[name].offer_extra(terms, kind_extras.get(name, {}))
            extra = {**base_extra, **offered}
            requirements.append(
                PaymentRequirements(
                    scheme=name,
                    network=terms.network,
                    asset=terms.asset.address,
                    amount=str(terms.tariff.max_amount),
                    pay_to=terms.pay_to,
                    max_timeout_seconds=terms.max_timeout_seconds,
                    extra=extra,
                )
            )
        gas_sponsoring = any(
            schemes[name].gas_sponsoring(terms, facilitator_extensions) for name in terms.schemes
        )
        return cls(terms, tuple(requirements), facilitator_signers, gas_sponsoring)

    def json_of(self, requirements: PaymentRequirements | PaymentRequirementsV1) -> str:
        """``requirements`` as the ledger keeps them: one of this offer's, already serialized,
        or (a v1 payment's) serialized now."""
        for offered, serialized in zip(self.requirements, self.requirements_json, strict=True):
            if requirements is offered:
                return serialized
        return ledger_json(requirements)

    def with_extra(self, scheme: str, extra: Mapping[str, Any]) -> Offer:
        """This offer with ``extra`` added to ``scheme``'s requirements (a corrective 402)."""
        requirements = tuple(
            r.model_copy(update={"extra": {**(r.extra or {}), **extra}})
            if r.scheme == scheme
            else r
            for r in self.requirements
        )
        return dataclasses.replace(self, requirements=requirements)

    def payment_required(self, resource_url: str, error: str) -> PaymentRequired:
        resource = ResourceInfo(
            url=resource_url, description=self.terms.description, mime_type=self.terms.mime_type
        )
        extensions = declare_eip2612_gas_sponsoring_extension() if self.gas_sponsoring else None
        return PaymentRequired(
            error=error, resource=resource, accepts=list(self.requirements), extensions=extensions
        )

    def v1_requirements(self, resource_url: str) -> list[PaymentRequirementsV1]:
        return [
            v1_requirements(requirements, resource_url, self.terms)
            for requirements in self.requirements
        ]


def ledger_json(requirements: PaymentRequirements | PaymentRequirementsV1) -> str:
    """Requirements as the ledger keeps them (``PaymentRecord.requirements_json``)."""
    return requirements.model_dump_json(by_alias=True, exclude_none=True)


def v1_requirements(
    requirements: PaymentRequirements, resource_url: str, terms: PaymentTerms
) -> PaymentRequirementsV1:
    """The same requirements in the v1 shape (``maxAmountRequired``, legacy network name).

    v1 requires ``resource`` (a URL), ``description`` and ``mimeType`` as strings: strict
    v1 clients (``x402-fetch``) refuse the whole 402 if one is missing.
    """
    return PaymentRequirementsV1(
        scheme=requirements.scheme,
        network=v1_network_name(requirements.network),
        max_amount_required=requirements.amount,
        resource=resource_url,
        description=terms.description or "",
        mime_type=terms.mime_type,
        pay_to=requirements.pay_to,
        max_timeout_seconds=requirements.max_timeout_seconds,
        asset=requirements.asset,
        extra=requirements.extra,
    )
