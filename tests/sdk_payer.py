"""Payment payloads made the way a real payer makes them: with the official x402 SDK client."""

from __future__ import annotations

import httpx
from eth_account import Account
from x402 import x402Client
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.mechanisms.evm.exact import ExactEvmClientScheme
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

from x402_meter.devstack import LocalStack
from x402_meter.facilitator import bearer_auth_provider


def facilitator_client(stack: LocalStack) -> HTTPFacilitatorClient:
    """The SDK's client for the stack's facilitator, with the stack's API key."""
    auth = bearer_auth_provider(stack.facilitator_api_key)
    return HTTPFacilitatorClient(
        FacilitatorConfig(url=stack.facilitator_url, timeout=30, auth_provider=auth)
    )


def supported_extra(stack: LocalStack, scheme: str) -> dict[str, object]:
    """The ``extra`` that the facilitator's ``/supported`` advertises for ``scheme``."""
    body = httpx.get(f"{stack.facilitator_url}/supported", timeout=10).json()
    for kind in body["kinds"]:
        if kind["scheme"] == scheme and kind["network"] == stack.network:
            return dict(kind.get("extra") or {})
    raise AssertionError(f"{scheme} not supported: {body}")


def requirements(
    stack: LocalStack,
    scheme: str,
    amount: int,
    *,
    pay_to: str | None = None,
    max_timeout_seconds: int = 120,
) -> PaymentRequirements:
    extra: dict[str, object] = {"name": stack.asset_name, "version": stack.asset_version}
    if scheme == "upto":
        extra |= {"assetTransferMethod": "permit2", **supported_extra(stack, "upto")}
    return PaymentRequirements(
        scheme=scheme,
        network=stack.network,
        asset=stack.asset,
        amount=str(amount),
        pay_to=pay_to or stack.pay_to,
        max_timeout_seconds=max_timeout_seconds,
        extra=extra,
    )


def sdk_client(stack: LocalStack, private_key: str) -> x402Client:
    """An SDK client paying with ``private_key``, allowed to spend the local test token."""
    account = Account.from_key(private_key)
    client = x402Client()
    client.register(stack.network, UptoEvmClientScheme(account))
    client.register(stack.network, ExactEvmClientScheme(account))
    client.set_spend_controls(
        {"allowed_assets": [{"network": stack.network, "asset": stack.asset}]}
    )
    return client


async def sign(
    stack: LocalStack, private_key: str, accepted: PaymentRequirements
) -> PaymentPayload:
    payload = await sdk_client(stack, private_key).create_payment_payload(
        PaymentRequired(accepts=[accepted])
    )
    assert isinstance(payload, PaymentPayload)
    return payload
