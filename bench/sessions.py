"""A paid answer by session (``batch-settlement``) beside one by ``upto``, in one run.

    .venv/bin/python -m bench.sessions [--answers 100] [--events 20]

On the local stack (anvil, the contracts, ``x402-meter facilitator``), ``bench/sse_server.py``
(the stub model's OpenAI stream) is served by uvicorn, each in its own process: bare, and
once per way of paying behind ``X402Meter`` offering both ``upto`` and sessions (a SQLite
ledger and channel store). Between each meter and the facilitator stands a
``bench/facilitator_tally.py``, a pass-through that notes every ``/verify`` and ``/settle``
that meter asks (from the request path, the settlement worker and the claims worker alike)
and what it answered: each way's facilitator calls and transactions are its own.

Each round streams one answer of ``--events`` events each way, in a rotating order:

- ``bare``: no payment (bench's minimal HTTP client, a fresh connection);
- ``upto`` and ``session``, paid by the official x402 Python SDK's client (``x402Client``;
  the session one with ``EthAccountSignerWithRPC``, as its channel recovery needs), driven
  as its httpx transport drives it: the request without a payment, its 402, the payload
  signed, the paid request; after a streamed answer the SDK client does not know the
  charge, so its next voucher gets the spec's corrective 402, which the client checks and
  adopts (``process_payment_result``) before it signs again and retries. Requests go out
  with bench's minimal HTTP client;
- ``session, x402-meter client``: ``PayingAsyncClient(schemes=("batch-settlement",
  "upto"))``, streaming through httpx: it reads each streamed answer's receipt before its
  channel signs again, so no corrective 402.

Measured per paid answer: the time to the first event added over the bare app's in the same
round (median, p90), of the paid request alone (from sending it) and as the payer has it
(from its first request for the answer: the unpaid 402, signing, a receipt read, a
corrective round trip included); requests sent; facilitator calls (at the tally); on-chain
transactions and their gas (the receipts, read from anvil) by kind: ``upto`` settlements;
session deposits, claims and sweeps. Every receipt is followed to its end first, and each
sessions' claims worker runs one pass at the end of the run (``POST /bench/claim``): one
claim and one sweep for every answer of the run, as its ``session_claim_interval`` would
do once a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from eth_account import Account
from x402 import x402Client
from x402.http import x402HTTPClient
from x402.http.utils import decode_payment_required_header, encode_payment_signature_header
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
from x402.mechanisms.evm.signers import EthAccountSignerWithRPC
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import PaymentPayload, PaymentRequired

from bench.common import machine, percentile
from bench.facilitator_tally import TallyServer, tally_server
from bench.http_client import Exchange
from bench.loopback import outcomes
from bench.servers import Server, pin_client, sse_server
from x402_meter import Asset
from x402_meter.client import PayingAsyncClient
from x402_meter.devstack import LocalStack, local_stack

PATH: Final = "/v1/chat/completions"
RECEIPT: Final = "x-payment-receipt"
QUESTION: Final = {
    "model": "gpt-4o-2024-08-06",
    "stream": True,
    "stream_options": {"include_usage": True},
    "messages": [{"role": "user", "content": "What does a session cost?"}],
}
MAX_TOKENS: Final = 1024
"""The meter's output limit: each answer's maximum is the prompt plus this, at the price."""
QUIET_CLAIMS: Final = {"session_withdraw_delay": 86_400, "session_claim_interval": 40_000.0}
"""The claims worker waits for ``POST /bench/claim`` (a day's withdraw delay allows it)."""


@dataclass
class Answer:
    """One paid (or bare) answer as the payer saw it."""

    first_event: float
    """Seconds from sending the request that was served to its first event."""
    payer_first_event: float
    """Seconds from the payer's first request for this answer to the first event: the
    unpaid request's 402, signing, a receipt read, a corrective round trip included."""
    requests: int
    """Requests the payer sent the server for this answer (receipt reads included)."""
    correctives: int
    receipt: str | None


def _get(headers: dict[str, str]) -> Callable[[str], str | None]:
    return lambda name: headers.get(name.lower())


class SdkPayer:
    """The official SDK client paying ``server`` for one scheme, as the SDK's httpx transport
    does: the request without a payment and its 402, the paid request, and once the
    corrective round trip on a 402 the client recovers from."""

    def __init__(self, client: x402Client, server: Server) -> None:
        self.client = client
        self.http = x402HTTPClient(client)
        self.server = server

    def _exchange(self, target: str, body: bytes, payload: PaymentPayload | None) -> Exchange:
        headers = (
            []
            if payload is None
            else [("payment-signature", encode_payment_signature_header(payload))]
        )
        return Exchange(self.server.host, self.server.port, target, headers=headers, body=body)

    async def pay(self, target: str, body: bytes) -> Answer:
        started = time.perf_counter()
        challenge = await self._exchange(target, body, None).run()
        required = decode_payment_required_header(challenge.headers["payment-required"])
        assert isinstance(required, PaymentRequired)
        requests, correctives = 1, 0
        while True:
            payload = await self.client.create_payment_payload(required)
            assert isinstance(payload, PaymentPayload)
            exchange = self._exchange(target, body, payload)
            await exchange.start()
            requests += 1
            if exchange.status == 200:
                break
            await exchange.finish()
            recovered = await self.http.process_payment_result(
                payload, _get(exchange.headers), exchange.status
            )
            if exchange.status != 402 or not recovered.recovered or correctives:
                raise RuntimeError(f"payment refused: {exchange.status} {exchange.tail!r}")
            correctives += 1
        payer = exchange.started + exchange.first_event - started
        await exchange.finish()
        if not exchange.complete_stream:
            raise RuntimeError(f"incomplete stream: {exchange.tail!r}")
        return Answer(exchange.first_event, payer, requests, correctives, exchange.headers[RECEIPT])


class TimedTransport(httpx.AsyncBaseTransport):
    """Under x402-meter's paying client: when each request went out, and what came back."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[tuple[float, bool, int]] = []
        """(when, carried a payment, status) of each request, in order."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        when = time.perf_counter()
        response = await self.inner.handle_async_request(request)
        self.sent.append((when, "payment-signature" in request.headers, response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class MeterClientPayer:
    """x402-meter's ``PayingAsyncClient`` paying by session, streaming with httpx."""

    def __init__(self, stack: LocalStack, key: str, server: Server) -> None:
        self.transport = TimedTransport()
        asset = Asset(stack.asset, stack.asset_name, stack.asset_version, stack.asset_decimals)
        self.client = PayingAsyncClient(
            key,
            network=stack.network,
            asset=asset,
            schemes=("batch-settlement", "upto"),
            transport=self.transport,
        )
        self.server = server

    async def pay(self, target: str, body: bytes) -> Answer:
        self.transport.sent.clear()
        started = time.perf_counter()
        first = float("nan")
        window = b""
        headers = {"content-type": "application/json"}
        url = f"{self.server.url}{target}"
        async with self.client.stream("POST", url, content=body, headers=headers) as response:
            if response.status_code != 200:
                raise RuntimeError(f"payment refused: {response.status_code}")
            async for chunk in response.aiter_raw():
                if first != first and b"data:" in window + chunk:
                    first = time.perf_counter()
                window = chunk[-4:]
            receipt = response.headers.get(RECEIPT)
        paid = [when for when, payment, _ in self.transport.sent if payment]
        correctives = sum(
            1 for _, payment, status in self.transport.sent if payment and status == 402
        )
        return Answer(
            first - paid[-1], first - started, len(self.transport.sent), correctives, receipt
        )

    async def aclose(self) -> None:
        await self.client.aclose()


async def bare_answer(server: Server, target: str, body: bytes) -> Answer:
    exchange = Exchange(server.host, server.port, target, body=body)
    await exchange.start()
    await exchange.finish()
    if not exchange.complete_stream:
        raise RuntimeError(f"bare: {exchange.status} {exchange.tail!r}")
    return Answer(exchange.first_event, exchange.first_event, 1, 0, None)


def upto_client(stack: LocalStack, key: str) -> x402Client:
    client = x402Client().register(stack.network, UptoEvmClientScheme(Account.from_key(key)))
    return _allowed(client, stack)


def session_client(stack: LocalStack, key: str) -> x402Client:
    """The SDK's session payer: its signer reads the chain, as its recovery needs."""
    signer = EthAccountSignerWithRPC(Account.from_key(key), stack.rpc_url)
    client = x402Client().register(stack.network, BatchSettlementEvmScheme(signer))
    return _allowed(client, stack)


def _allowed(client: x402Client, stack: LocalStack) -> x402Client:
    client.set_spend_controls(
        {"allowed_assets": [{"network": stack.network, "asset": stack.asset}]}
    )
    return client


@dataclass
class Column:
    """What one way of paying measured over the run."""

    label: str
    answers: list[Answer] = field(default_factory=list)
    added: list[float] = field(default_factory=list)
    """Per round: this answer's first event minus the bare one's (seconds)."""
    payer_added: list[float] = field(default_factory=list)
    receipts: Counter[str] = field(default_factory=Counter)
    verify: int = 0
    settle: int = 0
    transactions: Counter[str] = field(default_factory=Counter)
    gas: Counter[str] = field(default_factory=Counter)
    bare: list[Answer] = field(default_factory=list)
    """The bare app's answers of the same rounds."""

    def facilitator_calls(self) -> int:
        return self.verify + self.settle


Columns = dict[str, Column]
"""The ways of paying, by name (``upto``, ``session``, ``session-meter``)."""

WAYS: Final = {
    "upto": "`upto`, SDK client",
    "session": "session, SDK client",
    "session-meter": "session, x402-meter client",
}
"""Each paid way's name and the label of its column."""


async def run_rounds(
    ways: dict[str, Callable[[], Awaitable[Answer]]], rounds: int
) -> dict[str, list[Answer]]:
    """Every way once a round, the order rotating, so that drift spreads over all."""
    names = list(ways)
    answers: dict[str, list[Answer]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            answers[name].append(await ways[name]())
    return answers


def tally_transactions(stack: LocalStack, calls: Sequence[dict[str, Any]], column: Column) -> None:
    """One way's facilitator calls, and its on-chain transactions by kind."""
    w3 = stack.web3()
    for call in calls:
        if call["path"] == "/verify":
            column.verify += 1
            continue
        column.settle += 1
        if not (call["ok"] and call["transaction"]):
            continue
        kind = {"": "settlement", "deposit": "deposit", "settle": "sweep"}.get(
            call["type"], call["type"]
        )
        receipt = w3.eth.get_transaction_receipt(call["transaction"])
        column.transactions[kind] += 1
        column.gas[kind] += int(receipt["gasUsed"])


@dataclass(frozen=True)
class Metered:
    """One way's metered server and the tally in front of its facilitator."""

    server: Server
    tally: TallyServer


async def measure(
    stack: LocalStack, bare: Server, metered: dict[str, Metered], rounds: int, events: int
) -> Columns:
    target = f"{PATH}?events={events}"
    body = json.dumps(QUESTION).encode()
    keys = stack.payer_private_keys
    upto = SdkPayer(upto_client(stack, keys[0]), metered["upto"].server)
    session = SdkPayer(session_client(stack, keys[1]), metered["session"].server)
    ours = MeterClientPayer(stack, keys[2], metered["session-meter"].server)
    ways: dict[str, Callable[[], Awaitable[Answer]]] = {
        "bare": lambda: bare_answer(bare, target, body),
        "upto": lambda: upto.pay(target, body),
        "session": lambda: session.pay(target, body),
        "session-meter": lambda: ours.pay(target, body),
    }
    for _ in range(3):  # warm the bare server's imports and connections
        await ways["bare"]()
    try:
        answers = await run_rounds(ways, rounds)
    finally:
        await ours.aclose()
    columns = {name: Column(WAYS[name], answers[name], bare=answers["bare"]) for name in metered}
    async with httpx.AsyncClient(timeout=300) as client:
        for name, column in columns.items():
            for answer, base in zip(column.answers, answers["bare"], strict=True):
                column.added.append(answer.first_event - base.first_event)
                column.payer_added.append(answer.payer_first_event - base.first_event)
            server = metered[name].server
            receipts = [(server, a.receipt) for a in column.answers if a.receipt is not None]
            column.receipts = await outcomes(receipts)
            claimed = await client.post(f"{server.url}/bench/claim")
            claimed.raise_for_status()
    for name, column in columns.items():
        tally_transactions(stack, metered[name].tally.calls(), column)
    return columns


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.2f}"


def tables(columns: Columns, rounds: int) -> str:
    """The two tables: per paid answer, and over the run."""
    order = list(columns.values())
    rule = "|---|" + "---:|" * len(order)

    def head(what: str) -> str:
        return f"| {what} | " + " | ".join(c.label for c in order) + " |"

    def row(what: str, cell: Callable[[Column], str]) -> str:
        return f"| {what} | " + " | ".join(cell(c) for c in order) + " |"

    def per(count: float) -> str:
        return f"{count / rounds:,.2f}"

    def kinds(counter: Counter[str]) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in sorted(counter.items())) or "none"

    lines = [
        head("per paid answer"),
        rule,
        row("first event, added over bare: median, ms", lambda c: ms(median(c.added))),
        row("… p90, ms", lambda c: ms(percentile(c.added, 0.9))),
        row(
            "first event as the payer has it, added over bare: median, ms",
            lambda c: ms(median(c.payer_added)),
        ),
        row("… p90, ms", lambda c: ms(percentile(c.payer_added, 0.9))),
        row("requests sent", lambda c: per(sum(a.requests for a in c.answers))),
        row("… of which corrective 402s", lambda c: per(sum(a.correctives for a in c.answers))),
        row("facilitator `/verify` calls", lambda c: per(c.verify)),
        row("facilitator `/settle` calls", lambda c: per(c.settle)),
        row("on-chain transactions", lambda c: per(sum(c.transactions.values()))),
        row("gas", lambda c: f"{sum(c.gas.values()) / rounds:,.0f}"),
        "",
        head("over the run"),
        rule,
        row("transactions by kind", lambda c: kinds(c.transactions)),
        row("gas by kind", lambda c: kinds(c.gas)),
        row("receipts", lambda c: kinds(c.receipts)),
    ]
    return "\n".join(lines)


def report(columns: Columns, rounds: int, events: int, store: str, machine_line: str) -> str:
    bare = median([a.first_event for a in next(iter(columns.values())).bare])
    return "\n".join(
        [
            f"## Sessions beside `upto`: {rounds} streamed answers each ({events} events)",
            "",
            f"Machine: {machine_line}. Ledger and channel store: {store}. "
            f"The bare app's first event: {ms(bare)} ms (median).",
            "",
            tables(columns, rounds),
        ]
    )


def median(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def measure_on(stack: LocalStack, rounds: int, events: int, store: str = "sqlite") -> Columns:
    """The run on ``stack``: a tally and a metered server per way, the bare one, the rounds."""
    pin_client()
    with tempfile.TemporaryDirectory(prefix="x402-bench-sessions-") as tmp, ExitStack() as up:
        logs = Path(tmp)
        options = {"schemes": ["upto", "batch-settlement"], **QUIET_CLAIMS}
        bare = up.enter_context(sse_server("bare", stack, logs))
        metered = {}
        for name in WAYS:
            tally = up.enter_context(tally_server(stack.facilitator_url, logs, name=name))
            server = up.enter_context(
                sse_server(
                    "meter",
                    dataclasses.replace(stack, facilitator_url=tally.url),
                    logs,
                    name=f"meter-{name}",
                    store_url=f"sqlite:///{logs / name}.db" if store == "sqlite" else store,
                    max_tokens=MAX_TOKENS,
                    meter_options=options,
                )
            )
            metered[name] = Metered(server, tally)
        return asyncio.run(measure(stack, bare, metered, rounds, events))


def run(rounds: int, events: int, store: str = "sqlite") -> str:
    """The run on a local stack of its own, as a table."""
    machine_line = machine()  # before the harness is pinned to its cores
    with local_stack() as stack:
        columns = measure_on(stack, rounds, events, store)
    return report(columns, rounds, events, store, machine_line)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sessions")
    parser.add_argument("--answers", type=int, default=100, help="streamed answers each way")
    parser.add_argument("--events", type=int, default=20, help="events in each answer")
    parser.add_argument(
        "--store",
        default="sqlite",
        help="the meter's ledger and channel store: sqlite (a file, the default) or a URL",
    )
    args = parser.parse_args(argv)
    print(run(args.answers, args.events, args.store))


if __name__ == "__main__":
    main()
