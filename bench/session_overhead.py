"""One voucher request in-process: what the meter adds to a paid answer by session.

    .venv/bin/python -m bench.session_overhead [--requests 300] [--events 20] [--store sqlite]

The SSE app of section 3 (``bench.middleware_overhead``), called in-process with no server,
bare and behind X402Meter offering sessions, each paid request a voucher on one channel
that the channel store already knows (deposited, its mirror fresh): admitted by the meter
alone, with no facilitator call, as every voucher of ``bench.sessions`` after the first.
The vouchers are signed by the official SDK's client functions before the clock starts.
The ledger and the channel store are in memory or in one SQLite file (``--store``). Bare
and paid requests alternate; each is timed to its first body byte and to its end
(``time.perf_counter``), and the thread hops (``anyio.to_thread.run_sync``) of each paid
request are counted. ``bench.instructions --case session`` counts its instructions.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio.to_thread
from eth_account import Account
from x402.http.utils import encode_payment_signature_header
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme, sign_voucher
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SupportedKind,
    SupportedResponse,
)

from bench.common import Summary, percentile
from bench.middleware_overhead import ASSET, NETWORK, call, sse_app
from bench.sse_server import PRICE_PER_TOKEN
from x402_meter import MemoryStore, TokenPrice, X402Meter
from x402_meter.devstack.accounts import FACILITATOR, PAYERS, SELLER
from x402_meter.devstack.instant_facilitator import InstantFacilitator
from x402_meter.routing import DEFAULT_SPEC
from x402_meter.store import ChannelRecord, ChannelStore

SESSIONS: Final = "batch-settlement"
DEPOSIT: Final = 10**15
"""The channel's balance: more than any run's vouchers add up to."""


class SessionFacilitator(InstantFacilitator):
    """The in-process stand-in of section 3, also supporting sessions (it names a receiver
    authorizer). A voucher on a fresh channel never reaches it."""

    async def supported(self) -> SupportedResponse:
        supported = await super().supported()
        sessions = SupportedKind(
            x402_version=2,
            scheme=SESSIONS,
            network=self.network,
            extra={"receiverAuthorizer": FACILITATOR.address},
        )
        return supported.model_copy(update={"kinds": [*supported.kinds, sessions]})


def session_meter(app: Any, store: str, max_tokens: int = 16384) -> X402Meter:
    """X402Meter offering sessions beside ``upto``; ``store``: ``memory`` or a SQLite file."""
    ledger: Any = MemoryStore() if store == "memory" else f"sqlite:///{store}"
    return X402Meter(
        app,
        pay_to=SELLER.address,
        network=NETWORK,
        asset=ASSET,
        price_per_token=PRICE_PER_TOKEN,
        max_tokens=max_tokens,
        routes=["POST /v1/chat/completions"],
        store=ledger,
        facilitator=SessionFacilitator(),
        schemes=("upto", SESSIONS),
    )


class VoucherPayer:
    """One payer's channel with ``meter``: recorded in its channel store as deposited and
    freshly read, and vouchers on it signed ahead (each for the cumulative the meter will
    have charged by then, plus the request's maximum)."""

    def __init__(self, meter: X402Meter, requirements: PaymentRequirements) -> None:
        self.signer = EthAccountSigner(Account.from_key(PAYERS[0].private_key))
        self.requirements = requirements
        self.config = BatchSettlementEvmScheme(self.signer).build_channel_config(requirements)
        self.channel_id = compute_channel_id(self.config, NETWORK).lower()
        channels = meter.runtime.channels
        assert channels is not None
        self.channels: ChannelStore = channels
        self.maximum = int(requirements.amount)

    @classmethod
    async def opened(cls, meter: X402Meter) -> VoucherPayer:
        offer = await meter.runtime.offer(DEFAULT_SPEC, TokenPrice.flat(PRICE_PER_TOKEN))
        required = offer.payment_required("http://bench/v1/chat/completions", "payment required")
        session = next(r for r in required.accepts if r.scheme == SESSIONS)
        payer = cls(meter, session)
        await payer._deposited()
        return payer

    async def _deposited(self) -> None:
        config = self.config
        record = ChannelRecord(
            channel_id=self.channel_id,
            network=NETWORK,
            payer=config.payer.lower(),
            payer_authorizer=config.payer_authorizer.lower(),
            receiver=config.receiver.lower(),
            receiver_authorizer=config.receiver_authorizer.lower(),
            token=config.token.lower(),
            withdraw_delay=config.withdraw_delay,
            salt=config.salt.lower(),
            balance=DEPOSIT,
            synced_at=time.time() + 24 * 3600,  # fresh for the whole run, however slow
        )
        assert await self.channels.put(record) is not None

    async def charged(self) -> int:
        record = await self.channels.get(self.channel_id)
        assert record is not None
        return record.charged

    def header(self, cumulative: int) -> bytes:
        """The payment header of a voucher for ``cumulative``."""
        voucher = sign_voucher(self.signer, self.channel_id, str(cumulative), NETWORK)
        inner = {
            "type": "voucher",
            "channelConfig": self.config.to_dict(),
            "voucher": voucher.to_dict(),
        }
        payload = PaymentPayload(x402_version=2, accepted=self.requirements, payload=inner)
        return encode_payment_signature_header(payload).encode()

    async def headers(self, meter: X402Meter, app: Any, count: int) -> list[bytes]:
        """Serve one voucher to learn what an answer is charged (each is the same), then
        sign ``count`` more, each for what will have been charged before it."""
        await call(app, self.header(await self.charged() + self.maximum))
        await meter.runtime.settler.drain()
        cost = await self.charged()
        return [self.header(cost * (n + 1) + self.maximum) for n in range(count)]


@contextmanager
def counted_thread_hops() -> Iterator[Counter[str]]:
    """Count calls of ``anyio.to_thread.run_sync`` by the function sent to the thread."""
    hops: Counter[str] = Counter()
    original = anyio.to_thread.run_sync

    async def counting(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        hops[getattr(function, "__qualname__", repr(function))] += 1
        return await original(function, *args, **kwargs)

    anyio.to_thread.run_sync = counting  # type: ignore[assignment]
    try:
        yield hops
    finally:
        anyio.to_thread.run_sync = original


@dataclass(frozen=True)
class Timed:
    first_byte: float
    end: float
    hops_before_first_byte: int


async def timed_call(app: Any, header: bytes | None, hops: Counter[str] | None = None) -> Timed:
    """``call`` with the time to the first body byte and to the end, in microseconds, and
    the thread hops counted in ``hops`` before the first body byte."""
    started = time.perf_counter()
    before = sum(hops.values()) if hops is not None else 0
    first: list[float] = []
    hops_first: list[int] = []

    async def tapped(scope: Any, receive: Any, send: Any) -> None:
        async def timing(message: dict[str, Any]) -> None:
            if not first and message["type"] == "http.response.body" and message.get("body"):
                first.append(time.perf_counter())
                hops_first.append(sum(hops.values()) - before if hops is not None else 0)
            await send(message)

        await app(scope, receive, timing)

    await call(tapped, header)
    ended = time.perf_counter()
    return Timed((first[0] - started) * 1e6, (ended - started) * 1e6, hops_first[0])


async def measure(requests: int, events: int, store: str) -> dict[str, Any]:
    bare = sse_app(events)
    with tempfile.TemporaryDirectory() as scratch:
        path = "memory" if store == "memory" else str(Path(scratch) / "meter.sqlite3")
        meter = session_meter(bare, path)
        # The sweeper wakes by the wall clock: its reads would fall among the hops counted.
        settler = meter.runtime.settler
        settler.retry = dataclasses.replace(settler.retry, sweep_every=24 * 3600.0)
        payer = await VoucherPayer.opened(meter)
        warm = min(30, requests)
        headers = await payer.headers(meter, meter, requests + warm)
        samples: dict[str, list[float]] = {k: [] for k in ("bare", "paid", "bare_end", "paid_end")}
        early = 0
        with counted_thread_hops() as hops:
            for index, header in enumerate(headers):
                if index == warm:
                    hops.clear()
                    early = 0
                plain = await timed_call(bare, None)
                paid = await timed_call(meter, header, hops)
                early += paid.hops_before_first_byte
                await meter.runtime.settler.drain()
                if index >= warm:
                    samples["bare"].append(plain.first_byte)
                    samples["paid"].append(paid.first_byte)
                    samples["bare_end"].append(plain.end)
                    samples["paid_end"].append(paid.end)
        await meter.runtime.settler.aclose()
    return {"samples": samples, "hops": hops, "early": early, "requests": requests}


def report(store: str, result: dict[str, Any]) -> None:
    samples, requests = result["samples"], result["requests"]
    print(f"{store}: {requests} voucher requests, microseconds: median (min-max), p90")
    for name in ("bare", "paid", "bare_end", "paid_end"):
        summary = Summary.of(samples[name])
        print(f"  {name:9} {summary.cell()}, p90 {percentile(samples[name], 0.9):,.1f}")
    added = Summary.of(samples["paid"]).median - Summary.of(samples["bare"]).median
    print(f"  first byte added (medians): {added:.0f} us")
    hops: Counter[str] = result["hops"]
    print(f"  thread hops per voucher request: {sum(hops.values()) / requests:.2f}")
    print(f"  ... before its first byte: {result['early'] / requests:.2f}")
    for name, n in hops.most_common():
        print(f"    {n / requests:.2f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--store", action="append", choices=["memory", "sqlite"])
    args = parser.parse_args()
    for store in args.store or ["memory", "sqlite"]:
        report(store, asyncio.run(measure(args.requests, args.events, store)))


if __name__ == "__main__":
    main()
