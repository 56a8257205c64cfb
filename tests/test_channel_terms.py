"""``ChannelTerms`` remembers the channel configs that passed ``check_channel_terms`` and
nothing else: a remembered config is not checked again, a failing one always is, another
network or other server terms are checked afresh, and the memory stays within its size."""

from __future__ import annotations

import dataclasses

import pytest
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentRequirements

from x402_meter.devstack.accounts import PAYERS, SELLER
from x402_meter.errors import PaymentError
from x402_meter.schemes import channel_terms
from x402_meter.schemes.channel_payload import ChannelPayment, check_channel_terms
from x402_meter.schemes.channel_terms import ChannelTerms

NETWORK = "eip155:31337"
REQUIREMENTS = PaymentRequirements(
    scheme="batch-settlement",
    network=NETWORK,
    asset="0x5FbDB2315678afecb367f032d93F642f64180aa3",
    amount="1000",
    pay_to=SELLER.address,
    max_timeout_seconds=300,
    extra={"receiverAuthorizer": PAYERS[3].address, "withdrawDelay": 900},
)


def payment(payer: int = 0, salt: int = 0) -> ChannelPayment:
    scheme = BatchSettlementEvmScheme(EthAccountSigner(PAYERS[payer].account))
    config = dataclasses.replace(
        scheme.build_channel_config(REQUIREMENTS), salt="0x" + f"{salt:064x}"
    )
    channel_id = compute_channel_id(config, NETWORK).lower()
    return ChannelPayment("voucher", config, channel_id, 1000, "0x", None)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The channel ids ``check_channel_terms`` was run on."""
    seen: list[str] = []

    def counted(paid: ChannelPayment, requirements: PaymentRequirements) -> None:
        seen.append(paid.channel_id)
        check_channel_terms(paid, requirements)

    monkeypatch.setattr(channel_terms, "check_channel_terms", counted)
    return seen


def test_a_config_that_passed_is_not_checked_again(checks: list[str]) -> None:
    terms, paid = ChannelTerms(), payment()
    for _ in range(3):
        terms.check(paid, REQUIREMENTS)
    assert checks == [paid.channel_id]


def test_a_config_that_fails_is_checked_every_time(checks: list[str]) -> None:
    terms, paid = ChannelTerms(), payment()
    wrong_id = dataclasses.replace(paid, channel_id="0x" + "ab" * 32)
    for _ in range(2):
        with pytest.raises(PaymentError):
            terms.check(wrong_id, REQUIREMENTS)
    assert len(checks) == 2
    assert len(terms) == 0


def test_other_terms_or_another_network_are_checked_afresh(checks: list[str]) -> None:
    """A config remembered under this server's terms is refused under others."""
    terms, paid = ChannelTerms(), payment()
    terms.check(paid, REQUIREMENTS)
    other_receiver = REQUIREMENTS.model_copy(update={"pay_to": PAYERS[2].address})
    other_delay = REQUIREMENTS.model_copy(
        update={"extra": {**(REQUIREMENTS.extra or {}), "withdrawDelay": 3600}}
    )
    other_network = REQUIREMENTS.model_copy(update={"network": "eip155:8453"})
    for requirements in (other_receiver, other_delay, other_network):
        with pytest.raises(PaymentError):
            terms.check(paid, requirements)
    assert len(checks) == 4


def test_the_memory_keeps_the_most_recently_used_configs_within_its_size(
    checks: list[str],
) -> None:
    terms = ChannelTerms(size=2)
    first, second, third = payment(salt=1), payment(salt=2), payment(salt=3)
    for paid in (first, second, first, third):  # ``second`` is the least recently used
        terms.check(paid, REQUIREMENTS)
    assert len(terms) == 2
    terms.check(first, REQUIREMENTS)
    terms.check(second, REQUIREMENTS)
    assert checks == [first.channel_id, second.channel_id, third.channel_id, second.channel_id]
