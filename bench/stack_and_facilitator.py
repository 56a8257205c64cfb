"""Local stack start-up time and facilitator verify/settle latency.

    .venv/bin/python -m bench.stack_and_facilitator [--starts 5] [--payments 50]

Start-up: wall time from launching `x402-meter dev --json` to its JSON line. Latency: the
official SDK's HTTPFacilitatorClient against the local facilitator, `upto` payments signed
by the SDK client, settled below the maximum (a real transaction each).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

from x402 import x402Client
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import PaymentRequired

from bench.common import stack_facilitator, upto_requirements
from x402_meter.devstack import LocalStack, local_stack


def summary(name: str, samples: list[float], unit: str = "ms") -> str:
    ordered = sorted(samples)
    return (
        f"{name:<28} median {statistics.median(ordered):8.1f} {unit}"
        f"   min {ordered[0]:8.1f}   max {ordered[-1]:8.1f}   n={len(ordered)}"
    )


def time_dev_start(runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "x402_meter", "dev", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        process.stdout.readline()
        samples.append((time.perf_counter() - started) * 1000)
        process.terminate()
        process.wait()
    return samples


async def time_facilitator(stack: LocalStack, payments: int) -> tuple[list[float], list[float]]:
    from eth_account import Account

    facilitator = stack_facilitator(stack)
    requirements = upto_requirements(stack, facilitator, max_timeout_seconds=300)
    client = x402Client().register(
        stack.network, UptoEvmClientScheme(Account.from_key(stack.payer_private_keys[0]))
    )
    client.set_spend_controls(
        {"allowed_assets": [{"network": stack.network, "asset": stack.asset}]}
    )
    verify, settle = [], []
    for _ in range(payments):
        payload = await client.create_payment_payload(PaymentRequired(accepts=[requirements]))
        started = time.perf_counter()
        verified = await facilitator.verify(payload, requirements)
        verify.append((time.perf_counter() - started) * 1000)
        assert verified.is_valid, verified.invalid_reason
        started = time.perf_counter()
        settled = await facilitator.settle(
            payload, requirements.model_copy(update={"amount": "1234"})
        )
        settle.append((time.perf_counter() - started) * 1000)
        assert settled.success, settled.error_reason
    return verify, settle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--payments", type=int, default=50)
    args = parser.parse_args()
    print(summary("x402-meter dev: ready", time_dev_start(args.starts)))
    with local_stack() as stack:
        verify, settle = asyncio.run(time_facilitator(stack, args.payments))
    print(summary("facilitator /verify (upto)", verify))
    print(summary("facilitator /settle (upto)", settle))


if __name__ == "__main__":
    main()
