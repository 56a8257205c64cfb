"""A paid answer by session (``batch-settlement``) beside one by ``upto``, in one run.

    .venv/bin/python -m bench.sessions [--answers 100] [--events 20]

On the local stack (anvil, the contracts, ``x402-meter facilitator``), ``bench/sse_server.py``
(the stub model's OpenAI stream) is served by uvicorn twice, each in its own process: bare,
and behind ``X402Meter`` offering both ``upto`` and sessions (a SQLite ledger and channel
store). Between the meter and its facilitator stands ``bench/facilitator_tally.py``, a
pass-through that notes every ``/verify`` and ``/settle`` the facilitator is asked (by the
request path, the settlement worker and the claims worker alike) and what it answered.

Each round streams one answer of ``--events`` events each way, in a rotating order: bare,
``upto`` and session, paid by the official x402 Python SDK's client (``x402Client``; the
session one with ``EthAccountSignerWithRPC``, as its channel recovery needs). Payloads are
signed before the clock starts; the request goes out on a fresh connection (bench's minimal
HTTP client). After a streamed answer the SDK client does not know the charge: its next
voucher gets the spec's corrective 402, which the client checks and adopts
(``process_payment_result``), then it signs again and retries: that round trip (and the
signing) is in the payer's time to first event, and counted.

Measured per paid answer: the time to the first event added over the bare app's in the same
round (median, p90), of the paid request alone and as the payer sees it (corrective round
trip included); facilitator calls (at the tally); on-chain transactions and their gas (the
receipts, read from anvil) by kind: ``upto`` settlements; session deposits, claims and
sweeps. Every receipt is followed to its end first, and the sessions' claims worker runs one
pass at the end of the run (``POST /bench/claim``): one claim transaction and one sweep for
every answer of the run, as its ``session_claim_interval`` would do once a minute.
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
    """Seconds from sending the first request for this answer (payload signed) to the first
    event: a corrective 402's round trip and the signing after it included."""
    requests: int
    correctives: int
    receipt: str | None


def _get(headers: dict[str, str]) -> Callable[[str], str | None]:
    return lambda name: headers.get(name.lower())


class SdkPayer:
    """The official SDK client paying ``server`` for one scheme, with the corrective
    round trip the SDK's own httpx transport makes (once, on a recovered 402)."""

    def __init__(self, client: x402Client, server: Server, required: PaymentRequired) -> None:
        self.client = client
        self.http = x402HTTPClient(client)
        self.server = server
        self.required = required

    async def pay(self, target: str, body: bytes) -> Answer:
        payload = await self.client.create_payment_payload(self.required)
        started = time.perf_counter()
        requests = correctives = 0
        while True:
            assert isinstance(payload, PaymentPayload)
            exchange = Exchange(
                self.server.host,
                self.server.port,
                target,
                headers=[("payment-signature", encode_payment_signature_header(payload))],
                body=body,
            )
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
            payload = await self.client.create_payment_payload(self.required)
        payer = exchange.started + exchange.first_event - started
        await exchange.finish()
        if not exchange.complete_stream:
            raise RuntimeError(f"incomplete stream: {exchange.tail!r}")
        return Answer(exchange.first_event, payer, requests, correctives, exchange.headers[RECEIPT])


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
"""``upto`` and ``session`` (and any later way of paying), by name."""


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


def tally_transactions(
    stack: LocalStack, calls: Sequence[dict[str, Any]], columns: Columns
) -> None:
    """Facilitator calls and on-chain transactions per column (``upto`` / ``session``)."""
    w3 = stack.web3()
    for call in calls:
        column = columns["upto" if call["scheme"] == "upto" else "session"]
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


async def measure(
    stack: LocalStack, tally: TallyServer, bare: Server, meter: Server, rounds: int, events: int
) -> Columns:
    target = f"{PATH}?events={events}"
    body = json.dumps(QUESTION).encode()
    challenge = Exchange(meter.host, meter.port, target, body=body)
    await challenge.run()
    required = decode_payment_required_header(challenge.headers["payment-required"])
    assert isinstance(required, PaymentRequired)
    keys = stack.payer_private_keys
    upto = SdkPayer(upto_client(stack, keys[0]), meter, required)
    session = SdkPayer(session_client(stack, keys[1]), meter, required)
    # Hook: x402-meter's own PayingClient with sessions (it reads each streamed answer's
    # receipt and signs the next voucher exactly, with no corrective 402) goes here as a
    # third way when it lands.
    ways: dict[str, Callable[[], Awaitable[Answer]]] = {
        "bare": lambda: bare_answer(bare, target, body),
        "upto": lambda: upto.pay(target, body),
        "session": lambda: session.pay(target, body),
    }
    for _ in range(3):  # warm the bare server's imports and connections
        await ways["bare"]()
    answers = await run_rounds(ways, rounds)
    columns = {
        name: Column(name, answers[name], bare=answers["bare"]) for name in ("upto", "session")
    }
    for column in columns.values():
        for answer, base in zip(column.answers, answers["bare"], strict=True):
            column.added.append(answer.first_event - base.first_event)
            column.payer_added.append(answer.payer_first_event - base.first_event)
        receipts = [(meter, a.receipt) for a in column.answers if a.receipt is not None]
        column.receipts = await outcomes(receipts)
    async with httpx.AsyncClient(timeout=300) as client:
        claimed = await client.post(f"{meter.url}/bench/claim")
        claimed.raise_for_status()
    tally_transactions(stack, tally.calls(), columns)
    return columns


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.2f}"


def tables(columns: Columns, rounds: int) -> str:
    """The two tables: per paid answer, and over the run."""
    order = list(columns.values())
    rule = "|---|" + "---:|" * len(order)

    def head(what: str) -> str:
        return f"| {what} | " + " | ".join(f"`{c.label}`" for c in order) + " |"

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
            "first event as the SDK payer has it, added over bare: median, ms",
            lambda c: ms(median(c.payer_added)),
        ),
        row("… p90, ms", lambda c: ms(percentile(c.payer_added, 0.9))),
        row("paid requests sent", lambda c: per(sum(a.requests for a in c.answers))),
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
    """The run on ``stack``: the tally, the bare and the metered servers, the rounds."""
    pin_client()
    with tempfile.TemporaryDirectory(prefix="x402-bench-sessions-") as tmp:
        logs = Path(tmp)
        store_url = f"sqlite:///{logs / 'ledger.db'}" if store == "sqlite" else store
        with tally_server(stack.facilitator_url, logs) as tally:
            counted = dataclasses.replace(stack, facilitator_url=tally.url)
            options = {"schemes": ["upto", "batch-settlement"], **QUIET_CLAIMS}
            with (
                sse_server("bare", stack, logs) as bare,
                sse_server(
                    "meter",
                    counted,
                    logs,
                    store_url=store_url,
                    max_tokens=MAX_TOKENS,
                    meter_options=options,
                ) as meter,
            ):
                return asyncio.run(measure(stack, tally, bare, meter, rounds, events))


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
