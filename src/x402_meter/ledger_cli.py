"""``x402-meter ledger``: look into, retry and export the payment ledger of any store.

``--store`` is accepted before the action and after it (``ledger list --store X`` is how
people type it); ``DESCRIPTION`` is the command's plain-text help.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, Final, TextIO

import anyio

from x402_meter.errors import ConfigurationError
from x402_meter.facilitator import API_KEY_ENV, FacilitatorClient
from x402_meter.ledger_channels import (
    is_channel_id,
    list_channels,
    list_claims,
    retry_claim,
    show_channel,
)
from x402_meter.runtime import DEFAULT_STORE_URL, STORE_ENV
from x402_meter.schemes import BUILT_IN
from x402_meter.settlement import Settler
from x402_meter.store import (
    OPEN_STATES,
    LedgerState,
    PaymentRecord,
    PaymentStore,
    VoidedPayer,
    channel_store_beside,
    open_channel_store,
    open_store,
)

DESCRIPTION: Final = """\
Look into, retry and export the payment ledger of any store. --store goes before or
after the action; without it, $X402_METER_STORE, else the default store.

  x402-meter ledger list --store sqlite:///x402-meter.sqlite3 --state failed
  x402-meter ledger show RECEIPT_ID --store redis://127.0.0.1:6379/0
  x402-meter ledger retry RECEIPT_ID --facilitator-url https://...
  x402-meter ledger export --format csv > payments.csv
  x402-meter ledger voided                  (payers refused for voiding a payment)
  x402-meter ledger clear-voided PAYER      (serve such a payer again)

Sessions (batch-settlement): the channels are read beside the ledger (its SQLite file, its
Redis), or from --channel-store.

  x402-meter ledger channels --unclaimed    (channels with charges to claim)
  x402-meter ledger channel CHANNEL_ID      (one channel, its charges and claims)
  x402-meter ledger claims                  (the claim transactions)
  x402-meter ledger retry CHANNEL_ID        (end a refused claim's backoff)"""

EXPORT_FIELDS = [
    field.name
    for field in dataclasses.fields(PaymentRecord)
    if field.name not in ("payload_json", "requirements_json", "lease_owner", "lease_until")
]


def _store_option(default: Any) -> argparse.ArgumentParser:
    """``--store`` and ``--channel-store``, shared by ``ledger`` and each action so that
    either position works.

    The actions' copy defaults to SUPPRESS: an action without ``--store`` must not
    overwrite a ``--store`` given before it.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--store",
        default=default,
        metavar="URL",
        help=f"store URL (default: ${STORE_ENV}, else {DEFAULT_STORE_URL})",
    )
    parent.add_argument(
        "--channel-store",
        default=default,
        metavar="URL",
        help="the sessions' channel store, if not beside the ledger (memory://,"
        " sqlite:///path, redis://host:port/db)",
    )
    return parent


def add_parser(commands: Any) -> None:
    ledger = commands.add_parser(
        "ledger",
        help="list, show, retry and export recorded payments",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_store_option(None)],
    )
    actions = ledger.add_subparsers(dest="action", required=True, metavar="ACTION")
    store = _store_option(argparse.SUPPRESS)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(
            name, help=help, description=help[0].upper() + help[1:] + ".", parents=[store]
        )
        return parser

    listing = action("list", "recent payments, newest first")
    listing.add_argument("--state", action="append", choices=[s.value for s in LedgerState])
    listing.add_argument("--limit", type=int, default=50)
    show = action("show", "one payment, every field, as JSON")
    show.add_argument("receipt_id")
    retry = action(
        "retry",
        "settle a failed or pending payment again, now; or, given a channel id, end its"
        " refused claim's backoff (the server's claims worker claims it next)",
    )
    retry.add_argument("receipt_id", metavar="RECEIPT_ID|CHANNEL_ID")
    retry.add_argument(
        "--facilitator-url",
        help=f"for a payment (required there); its API key, if any, from ${API_KEY_ENV}",
    )
    export = action("export", "every payment, as CSV or JSON lines")
    export.add_argument("--format", choices=["csv", "json"], default="csv")
    export.add_argument("--state", action="append", choices=[s.value for s in LedgerState])
    voided = action("voided", "payers refused (402 payer_voided) for voiding an authorization")
    voided.add_argument("--limit", type=int, default=100)
    clear = action("clear-voided", "stop refusing a payer that voided")
    clear.add_argument("payer", help="the payer's address")
    channels = action("channels", "sessions' channels, the most recently written first")
    channels.add_argument("--limit", type=int, default=50)
    channels.add_argument(
        "--unclaimed", action="store_true", help="only those with charges to claim"
    )
    channels.add_argument("--json", action="store_true", help="JSON lines, every field")
    channel = action("channel", "one channel: every field, its charges and its claims")
    channel.add_argument("channel_id")
    channel.add_argument("--charges", type=int, default=20, help="how many, newest first")
    channel.add_argument("--json", action="store_true")
    claims = action("claims", "the claim transactions of sessions, newest first")
    claims.add_argument("--limit", type=int, default=50)
    claims.add_argument("--json", action="store_true", help="JSON lines, with each channel")
    ledger.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    url = args.store or os.environ.get(STORE_ENV) or DEFAULT_STORE_URL
    result: int = anyio.run(_dispatch, open_store(url), args)
    return result


CHANNEL_ACTIONS: Final = frozenset({"channels", "channel", "claims"})


async def _dispatch(store: PaymentStore, args: argparse.Namespace) -> int:
    try:
        if args.action in CHANNEL_ACTIONS or (
            args.action == "retry" and is_channel_id(args.receipt_id)
        ):
            return await _channel_action(store, args)
        states = [LedgerState(s) for s in args.state] if getattr(args, "state", None) else None
        if args.action == "list":
            return _print_table(await store.list(states, limit=args.limit), sys.stdout)
        if args.action == "show":
            return await _show(store, args.receipt_id)
        if args.action == "retry":
            return await _retry(store, args.receipt_id, args.facilitator_url)
        if args.action == "voided":
            voided = await store.voided_payers(time.time(), limit=args.limit)
            return _print_voided(voided, sys.stdout)
        if args.action == "clear-voided":
            return await _clear_voided(store, args.payer)
        return await _export(store, states, args.format, sys.stdout)
    finally:
        await store.aclose()


async def _channel_action(store: PaymentStore, args: argparse.Namespace) -> int:
    url = getattr(args, "channel_store", None)
    try:
        channels = open_channel_store(url) if url else channel_store_beside(store)
    except ConfigurationError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    try:
        if args.action == "channels":
            return await list_channels(
                channels, sys.stdout, limit=args.limit, unclaimed=args.unclaimed, as_json=args.json
            )
        if args.action == "channel":
            return await show_channel(
                channels,
                store,
                args.channel_id.lower(),
                sys.stdout,
                sys.stderr,
                charges=args.charges,
                as_json=args.json,
            )
        if args.action == "claims":
            return await list_claims(channels, sys.stdout, limit=args.limit, as_json=args.json)
        return await retry_claim(channels, args.receipt_id.lower(), sys.stdout, sys.stderr)
    finally:
        await channels.aclose()


def _print_table(rows: list[PaymentRecord], out: TextIO) -> int:
    out.write(f"{'receipt':<26} {'state':<11} {'amount':>10} {'max':>10} {'payer':<42} created\n")
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row.created_at))
        amount = "" if row.amount is None else str(row.amount)
        note = row.transaction or row.error or ""
        out.write(
            f"{row.receipt_id:<26} {row.state.value:<11} {amount:>10} {row.max_amount:>10}"
            f" {row.payer:<42} {created}  {note}\n"
        )
    return 0


def _print_voided(entries: list[VoidedPayer], out: TextIO) -> int:
    out.write(f"{'payer':<42} {'refused until':<20} {'receipt':<26} reason\n")
    for entry in entries:
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.until))
        out.write(f"{entry.payer:<42} {until:<20} {entry.receipt_id or '':<26} {entry.reason}\n")
    return 0


async def _clear_voided(store: PaymentStore, payer: str) -> int:
    if not await store.clear_voided_payer(payer):
        print(f"payer {payer} is not refused", file=sys.stderr)
        return 1
    print(f"{payer}: no longer refused")
    return 0


async def _show(store: PaymentStore, receipt_id: str) -> int:
    row = await store.get(receipt_id)
    if row is None:
        print(f"no payment {receipt_id}", file=sys.stderr)
        return 1
    print(json.dumps(dataclasses.asdict(row), indent=2, default=str))
    return 0


async def _retry(store: PaymentStore, receipt_id: str, facilitator_url: str | None) -> int:
    row = await store.get(receipt_id)
    if row is None:
        print(f"no payment {receipt_id}", file=sys.stderr)
        return 1
    if row.state not in (LedgerState.FAILED, *OPEN_STATES):
        print(f"payment {receipt_id} is {row.state.value}: nothing to retry", file=sys.stderr)
        return 1
    if row.scheme not in BUILT_IN:
        # A session's charge goes into its channel, under the lock of the request that was
        # served: only the meter's own worker can finish it. Its claim is another matter
        # (``retry CHANNEL_ID``).
        print(
            f"payment {receipt_id} is a {row.scheme} charge: the meter's own settlement"
            " worker retries it (start the server); a channel's failed claim is retried"
            " with `ledger retry CHANNEL_ID`",
            file=sys.stderr,
        )
        return 1
    if facilitator_url is None:
        print("retrying a payment needs --facilitator-url", file=sys.stderr)
        return 2
    if row.state is LedgerState.FAILED:  # reopen it, keeping the history of attempts
        row = dataclasses.replace(row, state=LedgerState.TO_SETTLE, next_attempt_at=0.0)
        await store.save(row)
    # x402-meter facilitator wants its API key for /settle: the same variable the examples read.
    facilitator = FacilitatorClient(facilitator_url, api_key=os.environ.get(API_KEY_ENV) or None)
    settler = Settler(facilitator, store)
    now = time.time()
    claimed = await store.claim(receipt_id, settler.owner, now + settler.retry.lease_seconds, now)
    if claimed is None:
        print(f"payment {receipt_id} is being worked on by {row.lease_owner}", file=sys.stderr)
        return 1
    if claimed.state is LedgerState.VERIFIED:
        claimed = dataclasses.replace(claimed, state=LedgerState.TO_SETTLE)
    result = await settler.settle(claimed, attempts=1)
    print(f"{receipt_id}: {result.state.value} {result.transaction or result.error or ''}".rstrip())
    return 0 if result.state.is_final and result.state is not LedgerState.FAILED else 1


async def _rows(
    store: PaymentStore, states: list[LedgerState] | None
) -> AsyncIterator[PaymentRecord]:
    offset, page = 0, 500
    while True:
        rows = await store.list(states, limit=page, offset=offset)
        for row in rows:
            yield row
        if len(rows) < page:
            return
        offset += page


async def _export(
    store: PaymentStore, states: list[LedgerState] | None, fmt: str, out: TextIO
) -> int:
    writer = csv.DictWriter(out, EXPORT_FIELDS) if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    async for row in _rows(store, states):
        fields = {name: getattr(row, name) for name in EXPORT_FIELDS}
        fields["state"] = row.state.value
        if writer is not None:
            writer.writerow(fields)
        else:
            out.write(json.dumps(fields) + "\n")
    return 0
