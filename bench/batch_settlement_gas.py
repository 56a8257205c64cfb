"""Gas of the batch-settlement contracts on the local chain, next to one `upto` settlement.

    .venv/bin/python -m bench.batch_settlement_gas

Starts the local stack (anvil, the contracts at their canonical addresses, the facilitator)
and reads ``gasUsed`` from the receipt of each call: deposits through both collectors, claims
of 1, 10 and 100 vouchers (one per channel: a claim carries each channel's latest voucher),
the settle sweep, cooperative refunds and a timed withdrawal; and one `upto` settlement
through the facilitator (the SDK's Permit2 proxy path), which each paid answer costs without
channels. Payers and the receiver authorizer sign with the SDK. Gas is deterministic up to
the zero bytes of signatures (a few dozen gas), so one run is enough.

Per paid answer: a voucher is cumulative, so one claim row covers every answer served on its
channel since the last claim. Serving A answers therefore costs one claim (a row per channel
the answers came through) and one settle sweep, divided by A; the steady-state figures (not
a channel's first claim) are used. Deposits are shown on their own: one pays for as many
answers as it lasts.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Final

from web3.contract.contract import ContractFunction
from x402.mechanisms.evm.batch_settlement.constants import MIN_WITHDRAW_DELAY
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig, VoucherClaim
from x402.schemas import PaymentRequired

from bench.common import Payer, machine, stack_facilitator, upto_requirements
from x402_meter.devstack import LocalStack, local_stack
from x402_meter.devstack.accounts import DEPLOYER, PAYERS, SELLER, DevAccount, dev_account
from x402_meter.devstack.batch_settlement import BatchSettlementContracts

RECEIVER_AUTHORIZER: Final = dev_account(9)
RELAYER: Final = DEPLOYER
"""Sends what anyone may send. Not the facilitator's account: the facilitator process
counts that account's nonces itself."""
DEPOSIT: Final = 1_000_000
PRICE: Final = 1_000
"""Atomic units per answer; the gas does not depend on it."""
Channel = tuple[ChannelConfig, DevAccount]


class GasBench:
    """Channels on the local stack, and the gas of each call made on them, in order."""

    def __init__(self, stack: LocalStack) -> None:
        self.contracts = BatchSettlementContracts(
            stack.web3(), stack.asset, stack.asset_name, stack.asset_version
        )
        self.rows: list[tuple[str, int]] = []
        self._opened = 0

    def gas(self, what: str, call: ContractFunction, sender: DevAccount = RELAYER) -> int:
        used = int(self.contracts.send(call, sender.address)["gasUsed"])
        self.rows.append((what, used))
        return used

    def new_channel(self) -> Channel:
        """A channel of the next dev payer (round robin) to the stack's ``pay_to``."""
        payer = PAYERS[self._opened % len(PAYERS)]
        self._opened += 1
        config = self.contracts.channel_config(
            payer.address, SELLER.address, RECEIVER_AUTHORIZER.address
        )
        return config, payer

    def open_channels(self, count: int) -> list[Channel]:
        channels = [self.new_channel() for _ in range(count)]
        for config, payer in channels:
            call = self.contracts.eip3009_deposit_call(config, payer.account, DEPOSIT)
            self.contracts.send(call, RELAYER.address)
        return channels

    def vouchers(self, channels: Sequence[Channel], cumulative: int) -> list[VoucherClaim]:
        """Each channel's voucher for ``cumulative``, claimed in full."""
        return [
            self.contracts.voucher_claim(config, payer.account, cumulative, cumulative)
            for config, payer in channels
        ]

    def claim(self, what: str, claims: list[VoucherClaim]) -> int:
        call = self.contracts.claim_with_signature_call(claims, RECEIVER_AUTHORIZER.account)
        return self.gas(what, call)

    def settle(self, what: str) -> int:
        return self.gas(what, self.contracts.settle_call(SELLER.address))


def measure_deposits(bench: GasBench) -> None:
    contracts = bench.contracts
    for method, build in (
        ("EIP-3009", contracts.eip3009_deposit_call),
        ("Permit2", contracts.permit2_deposit_call),
    ):
        config, payer = bench.new_channel()
        bench.gas(
            f"deposit, {method} collector, new channel", build(config, payer.account, DEPOSIT)
        )
        bench.gas(f"deposit, {method} collector, top-up", build(config, payer.account, DEPOSIT))


def measure_claims(bench: GasBench, sizes: Sequence[int]) -> tuple[dict[int, int], int]:
    """Steady-state claimWithSignature gas by batch size, and the steady-state sweep."""
    steady: dict[int, int] = {}
    sweep = 0
    for size in sizes:
        vouchers = f"{size} voucher" + ("s" if size != 1 else "")
        channels = bench.open_channels(size)
        bench.claim(
            f"claimWithSignature, {vouchers}, first claim of each channel",
            bench.vouchers(channels, PRICE),
        )
        bench.settle("settle sweep after it")
        steady[size] = bench.claim(
            f"claimWithSignature, {vouchers}, a later claim of each channel",
            bench.vouchers(channels, 2 * PRICE),
        )
        sweep = bench.settle("settle sweep after it")
    channels = bench.open_channels(10)
    bench.gas(
        "claim (sent by the receiver authorizer, no batch signature), 10 vouchers",
        bench.contracts.claim_call(bench.vouchers(channels, PRICE)),
        RECEIVER_AUTHORIZER,
    )
    return steady, sweep


def measure_refunds(bench: GasBench) -> None:
    contracts = bench.contracts
    ((config, payer),) = bench.open_channels(1)
    bench.gas(
        "refundWithSignature, part of the unclaimed balance",
        contracts.refund_with_signature_call(config, DEPOSIT // 4, 0, RECEIVER_AUTHORIZER.account),
    )
    # What the SDK facilitator sends for a cooperative refund: the last voucher claimed,
    # the rest returned, in one multicall.
    claim = contracts.claim_with_signature_call(
        bench.vouchers([(config, payer)], PRICE), RECEIVER_AUTHORIZER.account
    )
    refund = contracts.refund_with_signature_call(config, DEPOSIT, 1, RECEIVER_AUTHORIZER.account)
    bench.gas(
        "multicall: claim the last voucher, refund the rest (the SDK's cooperative refund)",
        contracts.multicall_call([claim, refund]),
    )


def measure_withdrawal(bench: GasBench) -> None:
    """Last: it moves the chain's clock past the withdraw delay."""
    contracts = bench.contracts
    ((config, payer),) = bench.open_channels(1)
    bench.gas("initiateWithdraw", contracts.initiate_withdraw_call(config, DEPOSIT), payer)
    contracts.w3.provider.make_request("evm_increaseTime", [MIN_WITHDRAW_DELAY])  # type: ignore[arg-type]
    contracts.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    bench.gas("finalizeWithdraw", contracts.finalize_withdraw_call(config), payer)


async def upto_settlement_gas(stack: LocalStack) -> int:
    """One `upto` payment signed by the SDK client, settled by the local facilitator."""
    facilitator = stack_facilitator(stack)
    requirements = upto_requirements(stack, facilitator, max_timeout_seconds=600)
    (payload,) = await Payer(stack.network, stack.asset, stack.payer_private_keys[0]).payloads(
        PaymentRequired(accepts=[requirements]), 1
    )
    result = await facilitator.settle(
        payload, requirements.model_copy(update={"amount": str(PRICE)})
    )
    assert result.success, result.error_reason
    receipt = stack.web3().eth.get_transaction_receipt(result.transaction)  # type: ignore[arg-type]
    return int(receipt["gasUsed"])


def per_answer_rows(claims: dict[int, int], sweep: int, upto: int) -> list[tuple[str, int, float]]:
    """(scenario, gas of its claim and sweep, gas per answer)."""
    rows = []
    for answers, channels in ((10, 1), (100, 1), (100, 10), (100, 100)):
        if channels not in claims:
            continue
        total = claims[channels] + sweep
        where = "one channel" if channels == 1 else f"{channels} channels"
        rows.append(
            (f"{answers} answers on {where}, one claim + one sweep", total, total / answers)
        )
    rows.append(("`upto`: one settlement per answer", upto, float(upto)))
    return rows


def report(bench: GasBench, per_answer: list[tuple[str, int, float]]) -> str:
    lines = [
        "## Batch-settlement gas on the local chain",
        "",
        f"Machine: {machine()}",
        "",
        "| call | gas |",
        "|---|---:|",
        *(f"| {what} | {gas:,} |" for what, gas in bench.rows),
        "",
        "| per paid answer | gas of the transactions | gas per answer |",
        "|---|---:|---:|",
        *(f"| {what} | {total:,} | {each:,.0f} |" for what, total, each in per_answer),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_settlement_gas")
    parser.add_argument(
        "--sizes", default="1,10,100", help="claim batch sizes, comma-separated (default 1,10,100)"
    )
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    with local_stack() as stack:
        upto = asyncio.run(upto_settlement_gas(stack))
        bench = GasBench(stack)
        measure_deposits(bench)
        claims, sweep = measure_claims(bench, sizes)
        measure_refunds(bench)
        measure_withdrawal(bench)
        bench.rows.append(("`upto` settlement through the facilitator (Permit2 proxy)", upto))
        print(report(bench, per_answer_rows(claims, sweep, upto)))


if __name__ == "__main__":
    main()
