"""Reserve and record latency per store backend, as the middleware uses them.

    .venv/bin/python -m bench.stores [--operations 2000]

Per request the middleware reserves the authorization, saves the verified row, and saves it
again when the body closes; each is timed separately (median, p99) against memory, SQLite
(a file in a temporary directory, WAL, synchronous=NORMAL) and Redis (a private redis-server).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from x402_meter.devstack.redis_server import redis_server
from x402_meter.store import LedgerState, MemoryStore, PaymentRecord, PaymentStore, SQLiteStore
from x402_meter.store.redis import RedisStore

ROW = PaymentRecord(
    receipt_id="",
    key="",
    state=LedgerState.VERIFIED,
    scheme="upto",
    network="eip155:8453",
    asset="0x" + "11" * 20,
    payer="0x" + "22" * 20,
    pay_to="0x" + "33" * 20,
    max_amount=8192,
    x402_version=2,
    payload_json="{" + '"x": "' + "a" * 1200 + '"}',  # about the size of a real payload
    requirements_json="{" + '"y": "' + "b" * 300 + '"}',
    created_at=0.0,
    updated_at=0.0,
)


async def measure(store: PaymentStore, operations: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {"reserve": [], "save (verified)": [], "save (to_settle)": []}
    expires = time.time() + 600
    for index in range(operations):
        started = time.perf_counter()
        await store.reserve(f"key-{index}", expires)
        timings["reserve"].append(time.perf_counter() - started)
        row = dataclasses.replace(
            ROW, receipt_id=f"r{index}", key=f"key-{index}", created_at=time.time()
        )
        started = time.perf_counter()
        await store.save(row)
        timings["save (verified)"].append(time.perf_counter() - started)
        started = time.perf_counter()
        await store.save(dataclasses.replace(row, state=LedgerState.TO_SETTLE, amount=346))
        timings["save (to_settle)"].append(time.perf_counter() - started)
    await store.aclose()
    return timings


def report(backend: str, timings: dict[str, list[float]]) -> None:
    for operation, samples in timings.items():
        ordered = sorted(samples)
        p99 = ordered[int(len(ordered) * 0.99) - 1]
        print(
            f"{backend:<8} {operation:<18} median {statistics.median(ordered) * 1e6:8.1f} us"
            f"   p99 {p99 * 1e6:8.1f} us   n={len(ordered)}"
        )


async def main(operations: int) -> None:
    report("memory", await measure(MemoryStore(), operations))
    with tempfile.TemporaryDirectory() as scratch:
        report("sqlite", await measure(SQLiteStore(Path(scratch) / "bench.db"), operations))
    with redis_server() as url:
        report("redis", await measure(RedisStore(url), operations))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--operations", type=int, default=2000)
    anyio.run(main, parser.parse_args().operations)
