"""Attacks on the facilitator's batch-settlement side: claims, sweeps and refunds.

A claim, a sweep or a refund is a transaction the facilitator pays gas for, and one the
facilitator signs with its receiver-authorizer key when the body carries no signature: in
a stranger's hands the first is a free relayer, the second moves channel money (a payer
refunding its whole deposit before the seller has claimed what it served; an outsider
claiming a voucher's whole signed maximum instead of what was charged). The facilitator's
API keys and payee allowlist guard these bodies as they guard ``exact`` and ``upto``.

Everything is real: the SDK's client deposits and pays vouchers to the SDK's resource
server (tests/channel_seller.py) on the local stack, the attacks are HTTP requests to
``x402-meter facilitator`` processes, and their effect is read from the chain.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.server.channel_manager_common import (
    build_claim_payment_payload,
    build_payment_requirements,
    build_refund_payment_payload,
    build_settle_payment_payload,
)
from x402.mechanisms.evm.batch_settlement.server.storage import Channel
from x402.mechanisms.evm.batch_settlement.types import VoucherClaim

from tests.channel_bodies import body_of
from tests.channel_seller import (
    PRICE,
    Balances,
    ChannelSeller,
    channel_seller,
    pay,
)
from tests.examples.conftest import new_funded_payer
from tests.fault_harness import free_port, own_facilitator
from x402_meter.devstack import LocalStack
from x402_meter.devstack.accounts import dev_account
from x402_meter.devstack.batch_settlement import BatchSettlementContracts, ChannelState

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

DEPOSIT = 10 * PRICE
SERVED = 3


async def served_channel(stack: LocalStack, seller: ChannelSeller) -> tuple[str, Channel]:
    """A new payer's channel with the seller, SERVED requests paid: (payer, the channel)."""
    payer = new_funded_payer(stack)
    await pay(stack, seller, payer, SERVED)
    (channel,) = seller.scheme.get_storage().list()
    return payer.address, channel


def unsigned_bodies(channel: Channel, pay_to: str, stack: LocalStack) -> dict[str, dict[str, Any]]:
    """What an attacker sends: no authorizer signature, so the facilitator would sign.

    ``claim``: the voucher's whole signed maximum (more than was charged); ``refund``: the
    whole deposit back to the payer, nothing claimed for the seller; ``settle``: a sweep.
    """
    requirements = build_payment_requirements(pay_to, stack.asset, stack.network)
    overclaim = VoucherClaim(
        channel.channel_config,
        channel.signed_max_claimable,
        channel.signature,
        channel.signed_max_claimable,
    )
    refund = build_refund_payment_payload(
        channel, [], requirements, channel.balance, str(channel.refund_nonce), None, None
    )
    return {
        "claim": body_of(
            build_claim_payment_payload([overclaim], requirements, None), requirements
        ),
        "refund": body_of(refund, requirements),
        "settle": body_of(
            build_settle_payment_payload(requirements, pay_to, stack.asset), requirements
        ),
    }


def chain_view(stack: LocalStack, channel: Channel, payer: str, pay_to: str) -> tuple[Any, ...]:
    """Everything these attacks could move: balances, the channel, the payee's totals."""
    chain = BatchSettlementContracts(
        stack.web3(), stack.asset, stack.asset_name, stack.asset_version
    )
    state: ChannelState = chain.channel(channel.channel_config)
    return (
        Balances.read(stack, payer, pay_to),
        state,
        chain.receiver_totals(pay_to),
        chain.refund_nonce(channel.channel_config),
    )


def gas_account(stack: LocalStack, address: str) -> tuple[int, int]:
    w3 = stack.web3()
    account = Web3.to_checksum_address(address)
    return w3.eth.get_balance(account), w3.eth.get_transaction_count(account)


@pytest.mark.parametrize(
    "credentials",
    [{}, {"Authorization": "Bearer not-the-key-of-this-facilitator"}],
    ids=["none", "wrong-bearer"],
)
async def test_a_stranger_cannot_make_the_facilitator_claim_sweep_or_refund(
    x402_local_stack: LocalStack, credentials: dict[str, str]
) -> None:
    """401 for each body, no transaction, and nothing on chain moves. The same refund
    body with the API key is carried out: what stopped it was the missing key."""
    stack = x402_local_stack
    async with channel_seller(stack) as seller:
        payer, channel = await served_channel(stack, seller)
        bodies = unsigned_bodies(channel, seller.pay_to, stack)
        before = chain_view(stack, channel, payer, seller.pay_to)
        relayer = gas_account(stack, stack.facilitator_address)

        async with httpx.AsyncClient(timeout=60) as client:
            for name, body in bodies.items():
                response = await client.post(
                    f"{stack.facilitator_url}/settle", json=body, headers=credentials
                )
                assert response.status_code == 401, (name, response.text)
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert response.json()["errorReason"] == "unauthorized"

        assert gas_account(stack, stack.facilitator_address) == relayer
        assert chain_view(stack, channel, payer, seller.pay_to) == before

        async with httpx.AsyncClient(timeout=60, headers=stack.facilitator_headers()) as client:
            carried_out = await client.post(
                f"{stack.facilitator_url}/settle", json=bodies["refund"]
            )
        assert carried_out.json()["success"] is True, carried_out.text
        balances = before[0]
        assert Balances.read(stack, payer, seller.pay_to) == balances.moved(
            payer=DEPOSIT, contract=-DEPOSIT
        )  # the payer got its whole deposit back: the seller lost all it served


async def test_a_facilitator_refuses_channels_of_a_payee_it_does_not_serve(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """A facilitator started with ``--pay-to`` someone else refuses, even from a caller with
    a valid key: requirements for the seller's payTo (403, its own reason), and bodies for
    the payee it serves that touch the seller's channel (400, the receiver mismatch). No
    transaction, nothing on chain moves."""
    stack = x402_local_stack
    served = Account.create().address
    port = free_port()
    with own_facilitator(
        stack,
        tmp_path / "f.log",
        port,
        pay_to=[served],
        receiver_authorizer_key=stack.receiver_authorizer_private_key,
    ):
        own = dataclasses.replace(stack, facilitator_url=f"http://127.0.0.1:{port}")
        async with channel_seller(stack) as seller:
            payer, channel = await served_channel(stack, seller)
            before = chain_view(stack, channel, payer, seller.pay_to)
            relayer = gas_account(stack, dev_account(9).address)
            async with httpx.AsyncClient(timeout=60, headers=stack.facilitator_headers()) as client:
                for name, body in unsigned_bodies(channel, seller.pay_to, stack).items():
                    response = await client.post(f"{own.facilitator_url}/settle", json=body)
                    assert response.status_code == 403, (name, response.text)
                    assert response.json()["errorReason"] == "pay_to_not_served"
                for name, body in unsigned_bodies(channel, served, stack).items():
                    if name == "settle":
                        continue  # a sweep to the served payee touches no one else's channel
                    response = await client.post(f"{own.facilitator_url}/settle", json=body)
                    assert response.status_code == 400, (name, response.text)
                    assert response.json()["errorReason"] == (
                        "invalid_batch_settlement_evm_receiver_mismatch"
                    )
            assert gas_account(stack, dev_account(9).address) == relayer
            assert chain_view(stack, channel, payer, seller.pay_to) == before
