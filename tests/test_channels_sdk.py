"""Payment channels end to end with the x402 SDK's own pieces and the bundled facilitator.

Everything is real: the SDK's batch-settlement client pays with EIP-712 signatures, the SDK's
resource server (its FastAPI middleware and server-side scheme, in uvicorn) sells a route,
the local facilitator answers it over HTTP with the stack's API key, and deposits, claims,
sweeps, refunds and withdrawals are transactions on the anvil chain. After every step the
token balances of the payer, the batch-settlement contract and the seller's ``payTo`` are
read from the chain and checked to the atomic unit; the facilitator's transactions are
counted by its account's nonce and the seller's facilitator requests by their paths.

The stack is this module's own (a chain no other test signs against), and the timed
withdrawal gets one more: it moves the chain's clock forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError
from x402.mechanisms.evm.batch_settlement.server import ClaimResult
from x402.mechanisms.evm.batch_settlement.server.channel_manager_common import (
    build_claim_payment_payload,
    build_payment_requirements,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

from tests.channel_seller import (
    PRICE,
    Balances,
    ChannelSeller,
    channel_seller,
    pay,
    payer_scheme,
)
from tests.examples.conftest import new_funded_payer
from tests.sdk_payer import facilitator_client
from x402_meter.devstack import LocalStack, local_stack
from x402_meter.devstack.accounts import DEPLOYER, PAYERS
from x402_meter.devstack.batch_settlement import BatchSettlementContracts

pytestmark = pytest.mark.anyio

DEPOSIT = 10 * PRICE
"""What the SDK client deposits on its first request: the seller's ``minDeposit`` (10x)."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with local_stack(log_dir=tmp_path_factory.mktemp("channels-stack")) as running:
        yield running


def facilitator_transactions(stack: LocalStack) -> int:
    """How many transactions the facilitator's account has sent (its nonce)."""
    return stack.web3().eth.get_transaction_count(
        Web3.to_checksum_address(stack.facilitator_address)
    )


def contracts(stack: LocalStack) -> BatchSettlementContracts:
    return BatchSettlementContracts(
        stack.web3(), stack.asset, stack.asset_name, stack.asset_version
    )


def only_channel(seller: ChannelSeller, payer: str) -> str:
    (channel,) = [c for c in seller.scheme.get_storage().list() if c.channel_config.payer == payer]
    return channel.channel_id


@pytest.mark.parametrize("method", ["eip3009", "permit2"])
async def test_one_deposit_then_vouchers_that_cost_no_facilitator_call(
    stack: LocalStack, method: str
) -> None:
    """The first request deposits (one /verify, one /settle, one transaction); the next ones
    pay by voucher, checked by the seller alone: no facilitator request, no transaction, no
    token moves, and the seller's charge grows by the price each time."""
    payer = new_funded_payer(stack)
    async with channel_seller(stack) as seller:
        start = Balances.read(stack, payer.address, seller.pay_to)
        sent = facilitator_transactions(stack)

        (first,) = await pay(stack, seller, payer, 1, method)

        assert seller.facilitator_calls == ["/verify", "/settle"]
        assert facilitator_transactions(stack) == sent + 1
        assert first["transaction"].startswith("0x")
        deposited = start.moved(payer=-DEPOSIT, contract=DEPOSIT)
        assert Balances.read(stack, payer.address, seller.pay_to) == deposited
        channel_id = only_channel(seller, payer.address)
        assert seller.charged(channel_id) == PRICE

        vouchers = await pay(stack, seller, payer, 5, method)

        assert seller.facilitator_calls == ["/verify", "/settle"]  # 0 calls per voucher
        assert facilitator_transactions(stack) == sent + 1
        assert all(v["transaction"] == "" for v in vouchers)
        assert [v["extra"]["chargedAmount"] for v in vouchers] == [str(PRICE)] * 5
        assert Balances.read(stack, payer.address, seller.pay_to) == deposited
        assert seller.charged(channel_id) == 6 * PRICE
        state = contracts(stack).channel(channel_config(seller, payer.address))
        assert (state.balance, state.total_claimed) == (DEPOSIT, 0)


async def test_vouchers_of_several_channels_are_claimed_in_one_transaction_and_swept(
    stack: LocalStack,
) -> None:
    """Five payers, each its own channel with a different number of paid requests: one
    claim transaction records every channel's charge, one sweep moves their sum to payTo."""
    payers = [new_funded_payer(stack) for _ in range(5)]
    async with channel_seller(stack) as seller:
        for count, payer in enumerate(payers, start=1):
            await pay(stack, seller, payer, count)
        charges = {p.address: count * PRICE for count, p in enumerate(payers, start=1)}
        total = sum(charges.values())
        before = {p.address: Balances.read(stack, p.address, seller.pay_to) for p in payers}
        sent = facilitator_transactions(stack)
        calls = len(seller.facilitator_calls)

        claims = await seller.manager.claim()

        assert [(c.vouchers, c.transaction[:2]) for c in claims] == [(5, "0x")]
        assert facilitator_transactions(stack) == sent + 1
        assert seller.facilitator_calls[calls:] == ["/settle"]
        chain = contracts(stack)
        for payer in payers:
            config = channel_config(seller, payer.address)
            state = chain.channel(config)
            assert (state.balance, state.total_claimed) == (DEPOSIT, charges[payer.address])
            assert Balances.read(stack, payer.address, seller.pay_to) == before[payer.address]
        assert chain.receiver_totals(seller.pay_to) == (total, 0)

        swept = await seller.manager.settle()

        assert swept.transaction.startswith("0x")
        assert seller.settle_answers[-1]["amount"] == str(total)  # read from its Settled event
        assert facilitator_transactions(stack) == sent + 2
        for payer in payers:
            expected = before[payer.address].moved(contract=-total, pay_to=total)
            assert Balances.read(stack, payer.address, seller.pay_to) == expected
        assert chain.receiver_totals(seller.pay_to) == (total, total)


async def test_a_cooperative_refund_returns_the_unclaimed_remainder(stack: LocalStack) -> None:
    """The payer asks for its money back: in one transaction the facilitator claims what the
    seller charged and refunds the rest of the deposit to the payer; the sweep then pays
    the charge to payTo. Nothing stays in the contract."""
    payer = new_funded_payer(stack)
    async with channel_seller(stack) as seller:
        await pay(stack, seller, payer, 3)
        config = channel_config(seller, payer.address)
        before = Balances.read(stack, payer.address, seller.pay_to)
        sent = facilitator_transactions(stack)

        scheme = payer_scheme(stack, payer)
        refunded = await anyio.to_thread.run_sync(scheme.refund, seller.url())

        assert refunded.success, refunded
        assert refunded.amount == str(DEPOSIT - 3 * PRICE)
        assert facilitator_transactions(stack) == sent + 1
        remainder = DEPOSIT - 3 * PRICE
        assert Balances.read(stack, payer.address, seller.pay_to) == before.moved(
            payer=remainder, contract=-remainder
        )
        state = contracts(stack).channel(config)
        assert (state.balance, state.total_claimed) == (3 * PRICE, 3 * PRICE)

        await seller.manager.settle()

        assert Balances.read(stack, payer.address, seller.pay_to) == before.moved(
            payer=remainder, contract=-DEPOSIT, pay_to=3 * PRICE
        )
        assert contracts(stack).refund_nonce(config) == 1


@pytest.mark.slow  # a hundred deposits first
async def test_a_claim_of_a_hundred_vouchers_goes_through_in_one_transaction(
    stack: LocalStack,
) -> None:
    """The SDK's channel manager claims up to 100 vouchers at once: a body of ~70 KB and a
    transaction of ~4 million gas, both beyond the SDK signer's defaults (500,000 gas).
    The facilitator takes it and claims all hundred in one transaction."""
    chain = contracts(stack)
    payer, receiver = PAYERS[0], Account.create().address
    configs = []
    for _ in range(100):  # deposited directly: the claim is what is under test
        config = chain.channel_config(payer.address, receiver, stack.receiver_authorizer)
        chain.send(chain.eip3009_deposit_call(config, payer.account, 2 * PRICE), DEPLOYER.address)
        configs.append(config)
    claims = [
        chain.voucher_claim(c, payer.account, 2 * PRICE, PRICE + i) for i, c in enumerate(configs)
    ]
    requirements = build_payment_requirements(receiver, stack.asset, stack.network)
    body = build_claim_payment_payload(claims, requirements, None)  # the facilitator signs it
    sent = facilitator_transactions(stack)

    claimed = await facilitator_client(stack).settle(body, requirements)

    assert claimed.success, claimed
    assert facilitator_transactions(stack) == sent + 1
    receipt = stack.web3().eth.get_transaction_receipt(claimed.transaction)  # type: ignore[arg-type]
    assert receipt["gasUsed"] > 500_000
    total = sum(PRICE + i for i in range(100))
    assert chain.receiver_totals(receiver) == (total, 0)
    assert [chain.channel(c).total_claimed for c in configs] == [PRICE + i for i in range(100)]


def channel_config(seller: ChannelSeller, payer: str) -> ChannelConfig:
    channel = seller.scheme.get_storage().get(only_channel(seller, payer))
    assert channel is not None
    return channel.channel_config


def send_as(stack: LocalStack, account: LocalAccount, call: ContractFunction) -> None:
    """Send ``call`` signed by ``account`` (the payer acts on its own channel)."""
    w3 = stack.web3()
    tx = call.build_transaction(
        {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address)}
    )
    signed = account.sign_transaction(tx)  # type: ignore[arg-type]  # web3's TxParams
    sent = w3.eth.send_raw_transaction(signed.raw_transaction)
    assert w3.eth.wait_for_transaction_receipt(sent, timeout=30)["status"] == 1


def advance_clock(stack: LocalStack, seconds: int) -> None:
    anvil: Any = stack.web3().provider
    anvil.make_request("evm_increaseTime", [seconds])
    anvil.make_request("evm_mine", [])


async def test_a_timed_withdrawal_pays_out_after_the_delay_and_not_before(
    tmp_path: Path,
) -> None:
    """Without the seller's help, the payer takes its unclaimed balance back: it asks,
    waits the channel's withdraw delay, then finalizes. Before the delay the finalize
    reverts; meanwhile the seller can still claim what it served, and the withdrawal pays
    out only what is left."""
    with local_stack(log_dir=tmp_path) as own:  # the clock moves: no other test signs here
        payer = new_funded_payer(own)
        async with channel_seller(own) as seller:
            await pay(own, seller, payer, 4)
            config = channel_config(seller, payer.address)
            chain = contracts(own)
            start = Balances.read(own, payer.address, seller.pay_to)

            send_as(own, payer, chain.initiate_withdraw_call(config, DEPOSIT))
            with pytest.raises(ContractLogicError):
                chain.finalize_withdraw_call(config).call({"from": payer.address})
            advance_clock(own, config.withdraw_delay - 60)
            with pytest.raises(ContractLogicError):
                chain.finalize_withdraw_call(config).call({"from": payer.address})
            assert Balances.read(own, payer.address, seller.pay_to) == start

            claims: list[ClaimResult] = await seller.manager.claim()  # still within the delay
            assert [c.vouchers for c in claims] == [1]
            assert chain.channel(config).total_claimed == 4 * PRICE

            advance_clock(own, 60)
            send_as(own, payer, chain.finalize_withdraw_call(config))

            remainder = DEPOSIT - 4 * PRICE
            assert Balances.read(own, payer.address, seller.pay_to) == start.moved(
                payer=remainder, contract=-remainder
            )
            await seller.manager.settle()
            assert Balances.read(own, payer.address, seller.pay_to) == start.moved(
                payer=remainder, contract=-DEPOSIT, pay_to=4 * PRICE
            )
