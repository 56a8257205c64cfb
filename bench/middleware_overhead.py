"""What X402Meter adds to a paid request, and to a stream's throughput, without the facilitator.

    .venv/bin/python -m bench.middleware_overhead [--requests 1000] [--rounds 5]

1. Added latency: the same SSE app called in-process (no server, no network) bare and
   behind X402Meter with a fresh SDK-signed `upto` payment per request. The facilitator is an
   in-process stand-in that answers at once (this micro-benchmark only), so the figure is
   the middleware's own work: decode, checks, reservation, ledger, metering, settlement
   hand-off (drained inside the timed region).
2. Streaming throughput: uvicorn on loopback streams 2 MB of SSE chunks to an httpx client,
   bare and metered, alternating rounds in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import httpx
from eth_account import Account
from x402 import x402Client
from x402.http.utils import encode_payment_signature_header
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import (
    PaymentRequired,
    SettleResponse,
    SupportedKind,
    SupportedResponse,
    VerifyResponse,
)

from x402_meter import Asset, FacilitatorClient, MemoryStore, TokenPrice, X402Meter
from x402_meter.devstack.accounts import FACILITATOR, PAYERS, SELLER
from x402_meter.devstack.asgi_server import serving
from x402_meter.routing import DEFAULT_SPEC

NETWORK = "eip155:31337"
ASSET = Asset("0x5FbDB2315678afecb367f032d93F642f64180aa3", "USD Coin", "2", 6)
CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * 150 + b'"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":57,"completion_tokens":116}}\n\n'


class StandInFacilitator(FacilitatorClient):
    """Answers like a facilitator that accepts everything, instantly and in-process."""

    def __init__(self) -> None:
        super().__init__("http://stand-in.invalid")

    async def supported(self) -> SupportedResponse:
        kind = SupportedKind(
            x402_version=2,
            scheme="upto",
            network=NETWORK,
            extra={"facilitatorAddress": FACILITATOR.address},
        )
        return SupportedResponse(
            kinds=[kind], extensions=[], signers={"eip155:*": [FACILITATOR.address]}
        )

    async def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        return VerifyResponse(is_valid=True, payer=PAYERS[0].address)

    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        return SettleResponse(
            success=True, transaction="0x" + "ab" * 32, network=NETWORK, payer=PAYERS[0].address
        )


def sse_app(chunks: int) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for _ in range(chunks):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": USAGE, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    return app


def metered(app: Any) -> X402Meter:
    return X402Meter(
        app,
        pay_to=SELLER.address,
        network=NETWORK,
        asset=ASSET,
        price_per_token="0.000002",
        max_tokens=10_000_000,  # the 2 MB throughput stream must not reach the cap
        routes=["POST /v1/chat/completions"],
        store=MemoryStore(),
        facilitator=StandInFacilitator(),
    )


async def signed_headers(app: X402Meter, count: int) -> list[bytes]:
    offer = await app.runtime.offer(DEFAULT_SPEC, TokenPrice.flat("0.000002"))
    required = offer.payment_required("http://bench/v1/chat/completions", "payment required")
    client = x402Client().register(
        NETWORK, UptoEvmClientScheme(Account.from_key(PAYERS[0].private_key))
    )
    client.set_spend_controls({"allowed_assets": [{"network": NETWORK, "asset": ASSET.address}]})
    headers = []
    for _ in range(count):
        payload = await client.create_payment_payload(PaymentRequired(accepts=required.accepts))
        headers.append(encode_payment_signature_header(payload).encode())
    return headers


async def call(app: Any, header: bytes | None) -> None:
    headers = [(b"payment-signature", header)] if header else []
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), *headers],
        "scheme": "http",
        "server": ("bench", 80),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    assert statuses == [200], statuses


async def added_latency(requests: int) -> tuple[list[float], list[float]]:
    bare = sse_app(chunks=20)
    paid = metered(bare)
    headers = await signed_headers(paid, requests)
    bare_samples, paid_samples = [], []
    for header in headers:
        started = time.perf_counter()
        await call(bare, None)
        bare_samples.append((time.perf_counter() - started) * 1e6)
        started = time.perf_counter()
        await call(paid, header)
        await paid.runtime.settler.drain()
        paid_samples.append((time.perf_counter() - started) * 1e6)
    return bare_samples, paid_samples


async def throughput(rounds: int, chunks: int = 12_000) -> tuple[list[float], list[float]]:
    bare_app = sse_app(chunks)
    paid_app = metered(bare_app)
    headers = await signed_headers(paid_app, rounds)
    size_mb = chunks * len(CHUNK) / 1e6
    bare_rates, paid_rates = [], []
    async with (
        serving(bare_app) as bare_url,
        serving(paid_app) as paid_url,
        httpx.AsyncClient(timeout=60) as client,
    ):

        async def stream(url: str, header: bytes | None) -> float:
            started = time.perf_counter()
            extra = {"payment-signature": header.decode()} if header else {}
            async with client.stream(
                "POST", f"{url}/v1/chat/completions", headers=extra
            ) as response:
                assert response.status_code == 200
                async for _ in response.aiter_raw():
                    pass
            return size_mb / (time.perf_counter() - started)

        for header in headers:
            bare_rates.append(await stream(bare_url, None))
            paid_rates.append(await stream(paid_url, header))
    return bare_rates, paid_rates


def line(name: str, samples: list[float], unit: str) -> str:
    ordered = sorted(samples)
    return (
        f"{name:<34} median {statistics.median(ordered):9.1f} {unit}"
        f"   min {ordered[0]:9.1f}   max {ordered[-1]:9.1f}   n={len(ordered)}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    bare, paid = await added_latency(args.requests)
    print(line("in-process request, bare", bare, "us"))
    print(line("in-process request, X402Meter", paid, "us"))
    added = statistics.median(paid) - statistics.median(bare)
    print(f"{'added by X402Meter (median)':<34} {added:9.1f} us")
    bare_rates, paid_rates = await throughput(args.rounds)
    print(line("SSE over loopback, bare", bare_rates, "MB/s"))
    print(line("SSE over loopback, X402Meter", paid_rates, "MB/s"))
    ratio = statistics.median(paid_rates) / statistics.median(bare_rates)
    print(f"{'throughput ratio (median)':<34} {ratio:9.3f}")


if __name__ == "__main__":
    asyncio.run(main())
