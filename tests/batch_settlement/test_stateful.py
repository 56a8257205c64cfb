"""Random histories of deposits, vouchers, claims, refunds, withdrawals and settle sweeps,
on the contract and on a plain Python model of it, compared to the atomic unit after every
step: token balances of payers, escrow and receiver, every channel's (balance,
totalClaimed), pending withdrawal and refund nonce, and the receiver's totals.

Every transaction is mined at a timestamp the test sets (one second after the previous
one; later when a finalize waits first), so the model knows the time of each block. A
step the model predicts to fail is sent anyway (gas not estimated) and must revert without
changing anything. Each example starts from a snapshot of the chain and reverts to it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from eth_abi.abi import decode, encode
from eth_utils.abi import function_signature_to_4byte_selector
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from web3.contract.contract import ContractFunction
from x402.mechanisms.evm.batch_settlement.constants import BATCH_SETTLEMENT_ADDRESS
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import coerce_bytes32
from x402.mechanisms.evm.constants import MULTICALL3_ADDRESS

from tests.batch_settlement.chain import (
    OTHER_PAYER,
    PAYER,
    RECEIVER,
    RECEIVER_AUTHORIZER,
    RELAYER,
    balance,
    chain_time,
    escrow,
)
from x402_meter.devstack.accounts import DevAccount
from x402_meter.devstack.batch_settlement import BatchSettlementContracts

pytestmark = pytest.mark.slow

DELAY = 900
PAYER_OF = (PAYER, PAYER, OTHER_PAYER)
"""Three channels: two of one payer (different salts), one of another."""
channel_indexes = st.integers(0, len(PAYER_OF) - 1)
excesses = st.sampled_from([0, 0, 0, 0, 0, 0, 0, 1, 777])
"""What a claim asks beyond the voucher it carries: mostly nothing."""
shares = st.sampled_from([0, 1, 30, 50, 99, 100, 100, 101, 130])
"""Percent of what a channel has unclaimed (a refund, a withdrawal): above 100, more."""


def share_of(unclaimed: int, share: int) -> int:
    return unclaimed * share // 100 if share <= 100 else unclaimed + 10 * share


@dataclass
class ModelChannel:
    balance: int = 0
    total_claimed: int = 0
    pending_amount: int = 0
    pending_since: int = 0
    refund_nonce: int = 0
    signed_ceiling: int = 0
    """The largest voucher the payer has signed: what its served requests cost so far."""

    @property
    def unclaimed(self) -> int:
        return self.balance - self.total_claimed


@dataclass
class Model:
    """What the contract should hold, computed without it."""

    channels: list[ModelChannel]
    tokens: dict[str, int]
    """Token balances by address: the payers, the receiver and the escrow ("escrow")."""
    receiver_claimed: int = 0
    receiver_settled: int = 0
    now: int = 0


class ChannelHistories(RuleBasedStateMachine):
    contracts: BatchSettlementContracts  # set by the test below
    configs: tuple[ChannelConfig, ...]

    def __init__(self) -> None:
        super().__init__()
        w3 = self.contracts.w3
        self.snapshot = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
        tokens = {
            account.address: balance(self.contracts, account.address)
            for account in (PAYER, OTHER_PAYER, RECEIVER)
        }
        tokens["escrow"] = escrow(self.contracts)
        self.model = Model(
            channels=[ModelChannel() for _ in PAYER_OF],
            tokens=tokens,
            now=chain_time(self.contracts),
        )

    def teardown(self) -> None:
        self.contracts.w3.provider.make_request("evm_revert", [self.snapshot])  # type: ignore[arg-type]

    @initialize()
    def open_every_channel(self) -> None:
        """Each channel starts funded, with some requests served (so claims have vouchers)."""
        for index in range(len(PAYER_OF)):
            self.deposit(index, 5_000, permit2=False)
            self.serve(index, 2_000)

    # -- driving the chain -------------------------------------------------------------

    def mine(self, call: ContractFunction, sender: DevAccount, *, succeeds: bool) -> None:
        """Mine ``call`` one second after the previous block; it must do what the model says."""
        self.model.now += 1
        w3 = self.contracts.w3
        w3.provider.make_request("evm_setNextBlockTimestamp", [self.model.now])  # type: ignore[arg-type]
        tx_hash = call.transact({"from": sender.address, "gas": 3_000_000})
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
        assert receipt["status"] == (1 if succeeds else 0), (call.fn_name, call.args)

    def pending_channels(self) -> list[int]:
        return [i for i, channel in enumerate(self.model.channels) if channel.pending_since]

    def move(self, source: str, target: str, amount: int) -> None:
        self.model.tokens[source] -= amount
        self.model.tokens[target] += amount

    # -- rules -------------------------------------------------------------------------

    @rule(index=channel_indexes, amount=st.integers(1, 5_000), permit2=st.booleans())
    def deposit(self, index: int, amount: int, permit2: bool) -> None:
        payer = PAYER_OF[index]
        config = self.configs[index]
        call = (
            self.contracts.permit2_deposit_call(config, payer.account, amount)
            if permit2
            else self.contracts.eip3009_deposit_call(config, payer.account, amount)
        )
        self.mine(call, RELAYER, succeeds=True)
        self.model.channels[index].balance += amount
        self.move(payer.address, "escrow", amount)

    def serve(self, index: int, price: int) -> None:
        """Off chain: the payer signs its next cumulative voucher, within the balance (a
        server takes no voucher beyond it; a later refund may still leave one beyond it)."""
        channel = self.model.channels[index]
        channel.signed_ceiling = max(
            channel.signed_ceiling, min(channel.signed_ceiling + price, channel.balance)
        )

    @rule(
        rows=st.lists(
            st.tuples(channel_indexes, st.integers(0, 3_000), st.integers(0, 100), excesses),
            min_size=1,
            max_size=3,
        ),
        signed_batch=st.booleans(),
    )
    def serve_and_claim(self, rows: list[tuple[int, int, int, int]], signed_batch: bool) -> None:
        """Per row: serve requests worth ``price`` on a channel, then claim ``percent`` of
        what its latest voucher adds to its claims, plus ``excess`` (more than was signed)."""
        for index, price, _, _ in rows:
            self.serve(index, price)
        claims = []
        after = [replace(channel) for channel in self.model.channels]
        claimed = 0
        succeeds = True
        for index, _, percent, excess in rows:
            channel = after[index]
            rest = channel.signed_ceiling - channel.total_claimed
            total = channel.total_claimed + rest * percent // 100 + excess
            claims.append(
                self.contracts.voucher_claim(
                    self.configs[index], PAYER_OF[index].account, channel.signed_ceiling, total
                )
            )
            if total <= channel.total_claimed:
                continue
            if total > channel.signed_ceiling or total > channel.balance:
                succeeds = False
                continue
            claimed += total - channel.total_claimed
            channel.total_claimed = total
        call = (
            self.contracts.claim_with_signature_call(claims, RECEIVER_AUTHORIZER.account)
            if signed_batch
            else self.contracts.claim_call(claims)
        )
        self.mine(call, RELAYER if signed_batch else RECEIVER, succeeds=succeeds)
        if succeeds:
            self.model.channels = after
            self.model.receiver_claimed += claimed

    @rule(
        data=st.data(),
        share=shares,
        signed=st.booleans(),
        nonce_offset=st.sampled_from([0, 0, 0, -1, 1]),
    )
    def refund(self, data: st.DataObject, share: int, signed: bool, nonce_offset: int) -> None:
        """Often on a channel with a pending withdrawal, which the refund shrinks."""
        pending = self.pending_channels()
        index = data.draw(
            st.sampled_from(pending) | channel_indexes if pending else channel_indexes
        )
        channel = self.model.channels[index]
        config = self.configs[index]
        amount = share_of(channel.unclaimed, share)
        if signed:
            nonce = max(channel.refund_nonce + nonce_offset, 0)
            call = self.contracts.refund_with_signature_call(
                config, amount, nonce, RECEIVER_AUTHORIZER.account
            )
            succeeds = amount != 0 and nonce == channel.refund_nonce
            self.mine(call, RELAYER, succeeds=succeeds)
        else:
            succeeds = amount != 0
            self.mine(self.contracts.refund_call(config, amount), RECEIVER, succeeds=succeeds)
        if not succeeds:
            return
        channel.refund_nonce += 1
        refunded = min(amount, channel.unclaimed)
        channel.balance -= refunded
        if channel.pending_since and refunded >= channel.pending_amount:
            channel.pending_amount = channel.pending_since = 0
        elif channel.pending_since:
            channel.pending_amount -= refunded
        self.move("escrow", PAYER_OF[index].address, refunded)

    @rule(index=channel_indexes, share=shares)
    def initiate_withdraw(self, index: int, share: int) -> None:
        channel = self.model.channels[index]
        amount = share_of(channel.unclaimed, share)
        succeeds = channel.pending_since == 0 and 0 < amount <= channel.unclaimed
        call = self.contracts.initiate_withdraw_call(self.configs[index], amount)
        self.mine(call, PAYER_OF[index], succeeds=succeeds)
        if succeeds:
            channel.pending_amount, channel.pending_since = amount, self.model.now

    @precondition(lambda self: self.pending_channels())
    @rule(data=st.data(), wait=st.sampled_from([0, 1, DELAY - 2, DELAY - 1, DELAY, 2 * DELAY]))
    def finalize_withdraw(self, data: st.DataObject, wait: int) -> None:
        """After ``wait`` seconds, on a channel with a pending withdrawal (without one, it is
        refused: tests/batch_settlement/test_withdrawals.py)."""
        index = data.draw(st.sampled_from(self.pending_channels()), label="channel")
        self.model.now += wait
        channel = self.model.channels[index]
        mined_at = self.model.now + 1
        succeeds = channel.pending_since != 0 and mined_at >= channel.pending_since + DELAY
        self.mine(
            self.contracts.finalize_withdraw_call(self.configs[index]),
            PAYER_OF[index],
            succeeds=succeeds,
        )
        if succeeds:
            withdrawn = min(channel.pending_amount, channel.unclaimed)
            channel.balance -= withdrawn
            channel.pending_amount = channel.pending_since = 0
            self.move("escrow", PAYER_OF[index].address, withdrawn)

    @precondition(lambda self: self.model.receiver_claimed > self.model.receiver_settled)
    @rule()
    def settle(self) -> None:
        self.mine(self.contracts.settle_call(RECEIVER.address), RELAYER, succeeds=True)
        swept = self.model.receiver_claimed - self.model.receiver_settled
        self.model.receiver_settled = self.model.receiver_claimed
        self.move("escrow", RECEIVER.address, swept)

    # -- the comparison ----------------------------------------------------------------

    @invariant()
    def the_chain_matches_the_model(self) -> None:
        chain = read_chain(self.contracts, self.configs, list(self.model.tokens))
        assert chain.tokens == self.model.tokens
        for state, channel in zip(chain.channels, self.model.channels, strict=True):
            assert state == (
                channel.balance,
                channel.total_claimed,
                channel.pending_amount,
                channel.pending_since,
                channel.refund_nonce,
            )
            assert state[1] <= state[0]  # totalClaimed never exceeds the balance
        assert chain.receiver == (self.model.receiver_claimed, self.model.receiver_settled)
        # Conservation: the escrow holds every channel balance, less what was swept out.
        escrowed = sum(state[0] for state in chain.channels)
        assert chain.tokens["escrow"] == escrowed - chain.receiver[1]


@dataclass(frozen=True)
class ChainState:
    tokens: dict[str, int]
    channels: list[tuple[int, ...]]
    """(balance, totalClaimed, pending amount, pending since, refund nonce) per channel."""
    receiver: tuple[int, int]


def read_chain(
    contracts: BatchSettlementContracts, configs: tuple[ChannelConfig, ...], owners: list[str]
) -> ChainState:
    """Everything the model predicts, read in one ``eth_call`` (Multicall3 ``tryAggregate``).

    One call instead of fourteen keeps the hundreds of comparisons of a run fast.
    """
    settlement = contracts.settlement.address
    calls: list[tuple[str, bytes]] = [
        (contracts.token, call_data("balanceOf(address)", ["address"], [escrow_address(owner)]))
        for owner in owners
    ]
    for config in configs:
        channel_id = coerce_bytes32(contracts.channel_id(config))
        for getter in ("channels", "pendingWithdrawals", "refundNonce"):
            calls.append((settlement, call_data(f"{getter}(bytes32)", ["bytes32"], [channel_id])))
    calls.append(
        (
            settlement,
            call_data(
                "receivers(address,address)",
                ["address", "address"],
                [RECEIVER.address, contracts.token],
            ),
        )
    )
    raw = contracts.w3.eth.call(
        {
            "to": MULTICALL3_ADDRESS,
            "data": call_data(
                "tryAggregate(bool,(address,bytes)[])", ["bool", "(address,bytes)[]"], [True, calls]
            ),
        }
    )
    (results,) = decode(["(bool,bytes)[]"], raw)
    words = [decode(["uint256"] * (len(data) // 32), data) for _, data in results]
    tokens = {owner: words[i][0] for i, owner in enumerate(owners)}
    first = len(owners)  # then three getters per channel
    channels = [
        tuple(value for getter in range(3) for value in words[first + 3 * index + getter])
        for index in range(len(configs))
    ]
    receiver = words[-1]
    return ChainState(tokens, channels, (receiver[0], receiver[1]))


def escrow_address(owner: str) -> str:
    return BATCH_SETTLEMENT_ADDRESS if owner == "escrow" else owner


def call_data(signature: str, types: list[str], values: list[object]) -> bytes:
    return function_signature_to_4byte_selector(signature) + encode(types, values)


def test_random_channel_histories_match_a_plain_model(
    batch_chain: BatchSettlementContracts,
) -> None:
    configs = tuple(
        batch_chain.channel_config(
            payer.address,
            RECEIVER.address,
            RECEIVER_AUTHORIZER.address,
            withdraw_delay=DELAY,
            salt=bytes([index]) * 32,
        )
        for index, payer in enumerate(PAYER_OF)
    )

    class OnThisChain(ChannelHistories):
        contracts = batch_chain

    OnThisChain.configs = configs
    # No deadline: each step is transactions on a chain, timed by how busy the machine is.
    run_state_machine_as_test(
        OnThisChain,
        settings=settings(max_examples=12, stateful_step_count=25, deadline=None),
    )
