"""What ``x402-meter dev`` prints: the stack, its funded dev accounts and paste-ready exports.

A developer keeps ``x402-meter dev`` open in one terminal and runs an app and a paying
client in others; everything those need is printed once, in the variables the examples
read (``examples/common/settings.py``) plus ``X402_PAYER_PRIVATE_KEY`` for a paying
client. The payer keys and the facilitator's receiver-authorizer key are anvil's public,
well-known dev keys and are labelled so.
"""

from __future__ import annotations

import shlex
from typing import Any, Final

from x402_meter.devstack.accounts import (
    ANVIL_DEV_PRIVATE_KEYS,
    RECEIVER_AUTHORIZER,
    SELLER,
    DevAccount,
    dev_account,
)
from x402_meter.devstack.stack import PAYER_FUNDING, LocalStack
from x402_meter.facilitator import API_KEY_ENV

PAYER_KEY_ENV: Final = "X402_PAYER_PRIVATE_KEY"
"""A paying client's key; ``x402-meter dev`` exports the first funded dev payer's."""
PUBLIC_KEYS_NOTE: Final = "anvil's well-known dev keys: PUBLIC, for the local chain only"
RECEIVER_AUTHORIZER_NOTE: Final = (
    f"anvil's well-known dev key #{RECEIVER_AUTHORIZER.index}: PUBLIC, for the local chain"
    " only; the local facilitator signs batch-settlement claims and refunds with it"
)


def payers(stack: LocalStack) -> list[DevAccount]:
    """The stack's funded payers, with their dev account index and address."""
    return [dev_account(ANVIL_DEV_PRIVATE_KEYS.index(key)) for key in stack.payer_private_keys]


def exports(stack: LocalStack) -> dict[str, str]:
    """The environment an example app and a paying client need for this stack."""
    return {
        "X402_NETWORK": stack.network,
        "X402_RPC_URL": stack.rpc_url,
        "X402_FACILITATOR_URL": stack.facilitator_url,
        API_KEY_ENV: stack.facilitator_api_key,
        "X402_PAY_TO": stack.pay_to,
        "X402_ASSET": stack.asset,
        "X402_ASSET_NAME": stack.asset_name,
        "X402_ASSET_VERSION": stack.asset_version,
        "X402_ASSET_DECIMALS": str(stack.asset_decimals),
        PAYER_KEY_ENV: stack.payer_private_keys[0],
    }


def json_report(stack: LocalStack) -> dict[str, Any]:
    """``--json``: the stack's fields (a stable contract for scripts), payers and exports."""
    report = stack.as_json_dict()
    report["payers"] = [
        {"index": account.index, "address": account.address, "private_key": account.private_key}
        for account in payers(stack)
    ]
    report["payer_keys_note"] = PUBLIC_KEYS_NOTE
    report["receiver_authorizer_key_note"] = RECEIVER_AUTHORIZER_NOTE
    report["env"] = exports(stack)
    return report


def export_lines(stack: LocalStack) -> list[str]:
    """``export NAME=value`` lines, quoted for a POSIX shell; the payer key's is labelled."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in exports(stack).items()]
    index = payers(stack)[0].index
    lines.insert(-1, f"# anvil dev account #{index}: a PUBLIC key, for the local chain only")
    return lines


def summary(stack: LocalStack, elapsed: float, *, stable: bool) -> str:
    """The human-readable report, ending with the exports to paste.

    ``stable``: ports and API key were fixed, so the exports survive a restart; otherwise
    the report ends by saying how to fix them.
    """
    tokens = PAYER_FUNDING // 10**stack.asset_decimals
    funded = payers(stack)
    lines = [
        f"x402-meter local stack ready in {elapsed:.2f}s. Ctrl-C stops it.",
        "",
        f"  chain        {stack.rpc_url}  (chain id {stack.chain_id}, network {stack.network})",
        f"  facilitator  {stack.facilitator_url}",
        f"  api key      {stack.facilitator_api_key}  (a dev key for this local facilitator:"
        " Authorization: Bearer)",
        f"  asset        {stack.asset}  ({stack.asset_name} v{stack.asset_version},"
        f" {stack.asset_decimals} decimals)",
        f"  pay_to       {stack.pay_to}  (the seller, anvil dev account #{SELLER.index})",
        "",
        "batch-settlement (payment channels), at the x402 SDK's canonical addresses:",
        f"  contract     {stack.batch_settlement}",
        f"  collectors   {stack.erc3009_deposit_collector}  (EIP-3009 deposits)",
        f"               {stack.permit2_deposit_collector}  (Permit2 deposits)",
        f"  authorizer   {stack.receiver_authorizer}  (the receiver authorizer: the"
        " facilitator signs claims and refunds)",
        f"  its key      {stack.receiver_authorizer_private_key}  (anvil dev account"
        f" #{RECEIVER_AUTHORIZER.index}: a PUBLIC key, for the local chain only)",
        "",
        f"Funded payers, {tokens:,} test tokens each and Permit2 approved. Their keys are",
        f"{PUBLIC_KEYS_NOTE}:",
    ]
    lines += [f"  #{account.index}  {account.address}  {account.private_key}" for account in funded]
    lines += ["", "Paste into the shells of your app and your paying client:", ""]
    lines += export_lines(stack)
    if not stable:
        lines += [
            "",
            "Ports and API key are new on each run. To keep these exports across restarts:",
            "  x402-meter dev --port 8545 --api-key <16+ characters>   (rpc 8545,"
            " facilitator 8546; or X402_METER_DEV_API_KEY)",
        ]
    return "\n".join(lines)
