"""The ``x402-meter`` command: ``dev``, ``facilitator``, ``demo`` and ``ledger``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from x402_meter.facilitator_access import (
    API_KEYS_ENV,
    PAY_TO_ENV,
    ApiKeys,
    FacilitatorAccessError,
    PayeeAllowlist,
)
from x402_meter.facilitator_server import PRIVATE_KEY_ENV, FacilitatorConfigError

logger = logging.getLogger("x402_meter.facilitator")


def _cmd_dev(args: argparse.Namespace) -> int:
    from x402_meter.devstack import local_stack

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    started = time.perf_counter()
    with local_stack(chain_id=args.chain_id) as stack:
        elapsed = time.perf_counter() - started
        if args.json:
            print(json.dumps(stack.as_json_dict()), flush=True)
        else:
            print(
                f"x402-meter local stack ready in {elapsed:.2f}s\n"
                f"  chain        {stack.rpc_url}  ({stack.network})\n"
                f"  facilitator  {stack.facilitator_url}\n"
                f"  api key      {stack.facilitator_api_key}  (this stack's facilitator;"
                " Authorization: Bearer, X402Meter(facilitator_api_key=...))\n"
                f"  asset        {stack.asset}  ({stack.asset_name} v{stack.asset_version},"
                f" {stack.asset_decimals} decimals)\n"
                f"  pay_to       {stack.pay_to}\n"
                f"  payers       {len(stack.payer_private_keys)} funded anvil dev accounts"
                " (well-known public keys: local use only)\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
        print(f"ready in {elapsed:.3f}s", file=sys.stderr, flush=True)
        stop.wait()
    return 0


def _facilitator_access(args: argparse.Namespace) -> tuple[ApiKeys | None, PayeeAllowlist | None]:
    """The keys and payees from flags and environment; no auth or any payee only if asked."""
    keys = ApiKeys.parse_list(os.environ.get(API_KEYS_ENV, ""))
    if args.api_keys_file is not None:
        keys += ApiKeys.read_file(args.api_keys_file)
    payees = list(args.pay_to) + PayeeAllowlist.parse_list(os.environ.get(PAY_TO_ENV, ""))
    if keys and args.insecure_no_auth:
        raise FacilitatorAccessError("API keys and --insecure-no-auth contradict each other")
    if not keys and not args.insecure_no_auth:
        raise FacilitatorAccessError(
            f"no API keys: set {API_KEYS_ENV} (comma separated) or --api-keys-file; to run"
            " without authentication (anyone can settle and spend your gas) pass"
            " --insecure-no-auth"
        )
    if payees and args.any_pay_to:
        raise FacilitatorAccessError("--pay-to and --any-pay-to contradict each other")
    if not payees and not args.any_pay_to:
        raise FacilitatorAccessError(
            f"no payees: give --pay-to ADDRESS (repeatable) or {PAY_TO_ENV} (comma separated);"
            " to serve any payTo pass --any-pay-to"
        )
    return (ApiKeys(keys) if keys else None), (PayeeAllowlist(payees) if payees else None)


def _cmd_facilitator(args: argparse.Namespace) -> int:
    from x402_meter.facilitator_server import build_evm_facilitator, create_facilitator_app, serve

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    private_key = os.environ.get(PRIVATE_KEY_ENV)
    if not private_key:
        print(
            f"error: set {PRIVATE_KEY_ENV} to the settling account's private key", file=sys.stderr
        )
        return 2
    try:
        api_keys, payees = _facilitator_access(args)
        facilitator = build_evm_facilitator(private_key, args.rpc_url, args.network)
    except (FacilitatorConfigError, FacilitatorAccessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if api_keys is None:
        logger.warning(
            "--insecure-no-auth: /verify and /settle are open to anyone; anyone can settle"
            " payments (picking the amount of an upto payment) and spend this account's gas"
        )
    if payees is None:
        logger.warning("--any-pay-to: verifying and settling for any payTo address")
    signers = facilitator.get_supported().signers
    access = "no auth" if api_keys is None else f"{len(api_keys)} API key(s)"
    served = "any payTo" if payees is None else f"{len(payees)} payTo address(es)"

    def announce(url: str) -> None:
        print(
            f"x402-meter facilitator for {args.network} (signers {signers}; {access};"
            f" {served}) listening on {url}",
            flush=True,
        )

    app = create_facilitator_app(facilitator, api_keys=api_keys, payees=payees)
    serve(app, host=args.host, port=args.port, on_ready=announce)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from x402_meter.demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x402-meter", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser(
        "dev", help="run the local stack (chain, token, facilitator) until Ctrl-C"
    )
    dev.add_argument("--json", action="store_true", help="print one JSON line once ready")
    dev.add_argument("--chain-id", type=int, default=31337)
    dev.set_defaults(handler=_cmd_dev)

    facilitator = commands.add_parser(
        "facilitator",
        help=f"self-host an x402 facilitator for an EVM chain (key from ${PRIVATE_KEY_ENV})",
    )
    facilitator.add_argument("--rpc-url", required=True)
    facilitator.add_argument("--network", required=True, help="CAIP-2 id, e.g. eip155:8453")
    facilitator.add_argument("--host", default="127.0.0.1")
    facilitator.add_argument("--port", type=int, default=4020)
    facilitator.add_argument(
        "--api-keys-file",
        type=Path,
        help=f"API keys, one per line (# comments); also ${API_KEYS_ENV}, comma separated",
    )
    facilitator.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve /verify and /settle without authentication (anyone can settle)",
    )
    facilitator.add_argument(
        "--pay-to",
        action="append",
        default=[],
        metavar="ADDRESS",
        help=f"a payTo address to serve (repeatable); also ${PAY_TO_ENV}, comma separated",
    )
    facilitator.add_argument(
        "--any-pay-to", action="store_true", help="serve every payTo address (dev and tests)"
    )
    facilitator.set_defaults(handler=_cmd_facilitator)

    demo = commands.add_parser("demo", help="pay for tokens on the local stack, end to end")
    demo.set_defaults(handler=_cmd_demo)

    from x402_meter import ledger_cli

    ledger_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handler
    result: int = handler(args)
    return result
