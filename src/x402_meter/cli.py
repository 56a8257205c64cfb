"""The ``x402-meter`` command: ``dev``, ``facilitator``, ``gateway``, ``demo`` and ``ledger``.

Help texts are plain text (this docstring is not shown): ``--help`` is read in a terminal.
"""

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
from typing import Final

from x402_meter.devstack.anvil import ANVIL_ENV, AnvilInstallError, AnvilNotFoundError
from x402_meter.devstack.ports import PortInUseError
from x402_meter.devstack.processes import StartupError
from x402_meter.facilitator_access import (
    API_KEYS_ENV,
    PAY_TO_ENV,
    ApiKeys,
    FacilitatorAccessError,
    PayeeAllowlist,
)
from x402_meter.facilitator_authorizer import RECEIVER_AUTHORIZER_KEY_ENV
from x402_meter.facilitator_server import PRIVATE_KEY_ENV, FacilitatorConfigError

logger = logging.getLogger("x402_meter.facilitator")

SETUP_ERRORS: Final = (
    AnvilNotFoundError,
    AnvilInstallError,
    PortInUseError,
    FacilitatorAccessError,
)
"""What a user fixes on their side: one line naming the fix, exit status 2."""


DEV_API_KEY_ENV: Final = "X402_METER_DEV_API_KEY"
"""A fixed API key for ``x402-meter dev``'s facilitator (a dev key: the stack is local)."""


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0 meaning a free one the kernel picks."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65534:  # 65534: --port also takes the next one
        raise argparse.ArgumentTypeError(f"a port is 0-65534, got {port}")
    return port


def _dev_ports(args: argparse.Namespace) -> tuple[int, int]:
    """(rpc, facilitator): --rpc-port/--facilitator-port, else from --port, else 0 (free)."""
    base: int | None = args.port
    rpc = args.rpc_port if args.rpc_port is not None else (base or 0)
    facilitator = args.facilitator_port
    if facilitator is None:
        facilitator = base + 1 if base else 0
    return rpc, facilitator


def _ensure_anvil(install: bool) -> None:
    """Fail fast, in one line, when anvil is missing; install it first if asked to."""
    from x402_meter.devstack.anvil import find_anvil, install_anvil, npm_package

    try:
        find_anvil()
    except AnvilNotFoundError:
        if not install or os.environ.get(ANVIL_ENV):
            raise
        print(f"anvil not found: installing {npm_package()} with npm", file=sys.stderr)
        print(f"anvil installed: {install_anvil()}", file=sys.stderr, flush=True)


def _cmd_dev(args: argparse.Namespace) -> int:
    from x402_meter.devstack import local_stack
    from x402_meter.devstack.dev_report import json_report, summary

    api_key = args.api_key or os.environ.get(DEV_API_KEY_ENV) or None
    if api_key is not None:
        ApiKeys([api_key])  # the facilitator's own rules, checked before anything starts
    _ensure_anvil(args.install_anvil)
    rpc_port, facilitator_port = _dev_ports(args)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    started = time.perf_counter()
    try:
        with local_stack(
            chain_id=args.chain_id,
            rpc_port=rpc_port,
            facilitator_port=facilitator_port,
            facilitator_api_key=api_key,
        ) as stack:
            elapsed = time.perf_counter() - started
            if args.json:
                print(json.dumps(json_report(stack)), flush=True)
            else:
                stable = bool(rpc_port and facilitator_port and api_key)
                print(summary(stack, elapsed, stable=stable), flush=True)
            print(f"ready in {elapsed:.3f}s", file=sys.stderr, flush=True)
            stop.wait()
    except PortInUseError as exc:  # raised before anything starts
        raise PortInUseError(
            f"{exc}: choose others with --port BASE (or --rpc-port, --facilitator-port),"
            " or leave them out for free ones"
        ) from None
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
    from x402_meter.facilitator_authorizer import receiver_authorizer
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
        authorizer = receiver_authorizer(os.environ, args.receiver_authorizer_key_file)
        facilitator = build_evm_facilitator(
            private_key, args.rpc_url, args.network, receiver_authorizer=authorizer
        )
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
    channels = (
        "batch-settlement: servers sign their own claims"
        if authorizer is None
        else f"batch-settlement receiverAuthorizer {authorizer.address}"
    )

    def announce(url: str) -> None:
        print(
            f"x402-meter facilitator for {args.network} (signers {signers}; {access};"
            f" {served}; {channels}) listening on {url}",
            flush=True,
        )

    app = create_facilitator_app(facilitator, api_keys=api_keys, payees=payees)
    serve(app, host=args.host, port=args.port, on_ready=announce)
    return 0


def _cmd_gateway(args: argparse.Namespace) -> int:
    from x402_meter.gateway.config import GatewayConfigError, load_config
    from x402_meter.gateway.serve import check_runnable, serve

    try:
        if args.check:
            config = load_config(args.config, os.environ)
            check_runnable(config, args.workers)
            routes = ", ".join(config.routes)
            print(f"{args.config}: OK ({len(config.upstreams)} upstream(s); POST {routes})")
            return 0
        serve(args.config, host=args.host, port=args.port, workers=args.workers)
    except GatewayConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from x402_meter.demo import run_demo

    return run_demo()


DESCRIPTION: Final = """\
Charge per token for LLM APIs with x402 payments: a local dev stack, a self-hosted
facilitator, a paid gateway, an end-to-end demo and the payment ledger."""

DEV_DESCRIPTION: Final = f"""\
Run the local x402 stack until Ctrl-C: an anvil dev chain, a USDC-like test token,
Permit2, the x402 upto proxy, the batch-settlement contract and its deposit collectors,
funded payers and a facilitator over HTTP (exact, upto and batch-settlement).

It prints the funded dev accounts with their keys (anvil's well-known dev keys: public,
for the local chain only), the seller (pay_to), the facilitator's URL and API key, the
batch-settlement addresses and the facilitator's receiver-authorizer key (another public
dev key), and export lines to paste into the shells of your app and your paying client.

Ports are free ones picked anew on each run unless fixed; the API key is random unless
given. Fix both and a restarted stack keeps the exports you pasted:
  x402-meter dev --port 8545 --api-key my-local-dev-key-1234

anvil comes from npm; if it is missing, --install-anvil installs it (npm is needed), or
set {ANVIL_ENV} to an anvil binary."""

FACILITATOR_DESCRIPTION: Final = f"""\
Self-host an x402 facilitator (exact, upto and batch-settlement) for an EVM chain. The
settling account's key comes from ${PRIVATE_KEY_ENV}, never from the command line.
/verify and /settle need an API key and serve only the listed payees, unless
--insecure-no-auth and --any-pay-to say otherwise; so do a batch-settlement server's
claims, sweeps and refunds (sent to /settle: they spend the settling account's gas).

batch-settlement channels name a receiver authorizer, the key that signs claims and
refunds. Give the facilitator one (${RECEIVER_AUTHORIZER_KEY_ENV} or
--receiver-authorizer-key-file) and /supported advertises its address, so servers without
a key of their own can use it; without one, servers sign their own.

  export {PRIVATE_KEY_ENV}=0x...
  export {API_KEYS_ENV}="$(openssl rand -hex 32)"
  x402-meter facilitator --rpc-url https://sepolia.base.org --network eip155:84532 \\
      --pay-to 0xYourSellerAddress"""


GATEWAY_DESCRIPTION: Final = """\
Sell an existing LLM API (OpenAI, Anthropic, vLLM, Ollama, ...) per token: a gateway
that asks callers for x402 payments, forwards allowlisted requests to the upstreams in
the config with the gateway's own key, streams the answers back and charges the tokens
the upstream reports.

The config (TOML) names the upstreams, their paths and the plans (prices per model);
the environment may set X402_PAY_TO, X402_NETWORK, X402_FACILITATOR_URL,
X402_FACILITATOR_API_KEY, X402_METER_STORE and X402_ASSET (as x402-meter dev prints
them). Upstream keys come from the environment or files the config names, never
from the config itself. See docs/gateway.md.

  export OPENAI_API_KEY=sk-...
  x402-meter gateway --config gateway.toml --port 8402"""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; every help text is plain text (tests/test_cli_help.py)."""
    parser = argparse.ArgumentParser(
        prog="x402-meter", description=DESCRIPTION, formatter_class=PlainFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser(
        "dev",
        help="run the local stack (chain, token, facilitator) until Ctrl-C",
        description=DEV_DESCRIPTION,
        formatter_class=PlainFormatter,
    )
    dev.add_argument(
        "--json", action="store_true", help="print one JSON line once ready (for scripts)"
    )
    dev.add_argument("--chain-id", type=int, default=31337, help="default: 31337")
    dev.add_argument(
        "--port",
        type=_port,
        metavar="BASE",
        help="fixed ports: the chain RPC on BASE, the facilitator on BASE+1",
    )
    dev.add_argument("--rpc-port", type=_port, metavar="PORT", help="the chain RPC's port")
    dev.add_argument(
        "--facilitator-port", type=_port, metavar="PORT", help="the facilitator's port"
    )
    dev.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"a fixed dev API key for the facilitator (16+ characters); also ${DEV_API_KEY_ENV};"
        " default: a random one per run",
    )
    dev.add_argument(
        "--install-anvil",
        action="store_true",
        help=f"if anvil is missing, npm install it into {_anvil_cache_hint()}",
    )
    dev.set_defaults(handler=_cmd_dev)

    facilitator = commands.add_parser(
        "facilitator",
        help=f"self-host an x402 facilitator for an EVM chain (key from ${PRIVATE_KEY_ENV})",
        description=FACILITATOR_DESCRIPTION,
        formatter_class=PlainFormatter,
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
    facilitator.add_argument(
        "--receiver-authorizer-key-file",
        type=Path,
        metavar="PATH",
        help="a file holding the batch-settlement receiver-authorizer private key (one line;"
        f" # comments); also ${RECEIVER_AUTHORIZER_KEY_ENV}; default: none",
    )
    facilitator.set_defaults(handler=_cmd_facilitator)

    gateway = commands.add_parser(
        "gateway",
        help="sell an LLM API per token: a paid gateway configured by a TOML file",
        description=GATEWAY_DESCRIPTION,
        formatter_class=PlainFormatter,
    )
    gateway.add_argument("--config", required=True, metavar="FILE", help="the gateway.toml")
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument("--port", type=int, default=8402)
    gateway.add_argument(
        "--workers", type=int, default=1, help="uvicorn workers (2+ need a shared store)"
    )
    gateway.add_argument(
        "--check", action="store_true", help="check the configuration and exit (0 if usable)"
    )
    gateway.set_defaults(handler=_cmd_gateway)

    demo = commands.add_parser(
        "demo",
        help="pay for tokens on the local stack, end to end",
        description="Start the local stack and a metered app, then pay for tokens with the"
        " openai package through the paying client, end to end.",
    )
    demo.set_defaults(handler=_cmd_demo)

    from x402_meter import ledger_cli

    ledger_cli.add_parser(commands)
    return parser


class PlainFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks and indented examples as written."""


def _anvil_cache_hint() -> str:
    from x402_meter.devstack.anvil import anvil_cache_dir

    return str(anvil_cache_dir())


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; a setup problem is one line on stderr (exit 2), not a traceback."""
    args = build_parser().parse_args(argv)
    handler = args.handler
    try:
        result: int = handler(args)
    except SETUP_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:  # a child process died: its last lines say why
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return result
