"""Settlements per second on the local chain, one at a time and concurrently.

    .venv/bin/python -m bench.settlement [--payments 60] [--concurrency 8]

Each payment is an `upto` authorization signed by the SDK client, verified, then settled
below its maximum through the local facilitator over HTTP (a real transaction on anvil).
Signing and verification happen before the clock starts; only /settle is timed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio
from eth_account import Account
from x402 import x402Client
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

from bench.common import stack_facilitator, upto_requirements
from x402_meter.devstack import LocalStack, local_stack


async def verified_payments(
    stack: LocalStack, count: int
) -> tuple[PaymentRequirements, list[PaymentPayload]]:
    facilitator = stack_facilitator(stack)
    requirements = upto_requirements(stack, facilitator, max_timeout_seconds=600)
    payloads = []
    for index in range(count):
        key = stack.payer_private_keys[index % len(stack.payer_private_keys)]
        client = x402Client().register(stack.network, UptoEvmClientScheme(Account.from_key(key)))
        client.set_spend_controls(
            {"allowed_assets": [{"network": stack.network, "asset": stack.asset}]}
        )
        payload = await client.create_payment_payload(PaymentRequired(accepts=[requirements]))
        assert isinstance(payload, PaymentPayload)
        payloads.append(payload)
    return requirements, payloads


async def settle_all(stack: LocalStack, count: int, concurrency: int) -> tuple[float, list[float]]:
    requirements, payloads = await verified_payments(stack, count)
    charge = requirements.model_copy(update={"amount": "346"})
    facilitator = stack_facilitator(stack)
    latencies: list[float] = []
    limiter = anyio.Semaphore(concurrency)

    async def settle(payload: PaymentPayload) -> None:
        async with limiter:
            started = time.perf_counter()
            result = await facilitator.settle(payload, charge)
            latencies.append(time.perf_counter() - started)
            assert result.success, result.error_reason

    started = time.perf_counter()
    async with anyio.create_task_group() as tasks:
        for payload in payloads:
            tasks.start_soon(settle, payload)
    return time.perf_counter() - started, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--payments", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with local_stack() as stack:
        for concurrency in (1, args.concurrency):
            elapsed, latencies = anyio.run(settle_all, stack, args.payments, concurrency)
            ordered = sorted(latencies)
            print(
                f"concurrency {concurrency:>2}: {len(ordered) / elapsed:6.1f} settlements/s"
                f"   latency median {statistics.median(ordered) * 1000:6.1f} ms"
                f"   p90 {ordered[int(len(ordered) * 0.9) - 1] * 1000:6.1f} ms"
                f"   max {ordered[-1] * 1000:6.1f} ms"
            )


if __name__ == "__main__":
    main()
