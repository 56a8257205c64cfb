"""The bundled facilitator serves x402 v1 ``exact`` under the v1 name of its own chain only.

The SDK's own registration helper registers v1 for every v1 network name at once: a
facilitator on one chain would then take a v1 payment that names another and try it on
the chain it is on. Ours names only the chain it checked at startup.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from x402_meter.devstack import LocalStack


def kinds(stack: LocalStack, version: int) -> set[tuple[str, str]]:
    body = httpx.get(f"{stack.facilitator_url}/supported", timeout=10).json()
    return {(k["scheme"], k["network"]) for k in body["kinds"] if k["x402Version"] == version}


def v1_verify_body(stack: LocalStack, network: str) -> dict[str, Any]:
    payer, pay_to = "0x" + "ab" * 20, stack.pay_to
    now = int(time.time())
    return {
        "x402Version": 1,
        "paymentPayload": {
            "x402Version": 1,
            "scheme": "exact",
            "network": network,
            "payload": {
                "signature": "0x" + "11" * 65,
                "authorization": {
                    "from": payer,
                    "to": pay_to,
                    "value": "1000",
                    "validAfter": str(now - 60),
                    "validBefore": str(now + 300),
                    "nonce": "0x" + "22" * 32,
                },
            },
        },
        "paymentRequirements": {
            "scheme": "exact",
            "network": network,
            "maxAmountRequired": "1000",
            "resource": "http://127.0.0.1/flat",
            "description": "",
            "mimeType": "application/json",
            "payTo": pay_to,
            "maxTimeoutSeconds": 300,
            "asset": stack.asset,
            "extra": {"name": stack.asset_name, "version": stack.asset_version},
        },
    }


def test_a_facilitator_on_a_chain_with_a_v1_name_serves_v1_exact_under_it(
    interop_stack: LocalStack,
) -> None:
    assert kinds(interop_stack, 1) == {("exact", "base-sepolia")}
    assert kinds(interop_stack, 2) == {
        ("exact", interop_stack.network),
        ("upto", interop_stack.network),
        ("batch-settlement", interop_stack.network),
    }


def test_a_facilitator_on_a_chain_without_a_v1_name_serves_no_v1(
    x402_local_stack: LocalStack,
) -> None:
    assert kinds(x402_local_stack, 1) == set()


def test_a_v1_payment_naming_another_chain_is_refused_as_unsupported(
    interop_stack: LocalStack,
) -> None:
    response = httpx.post(
        f"{interop_stack.facilitator_url}/verify",
        json=v1_verify_body(interop_stack, "base"),  # Base mainnet: not this facilitator's chain
        headers=interop_stack.facilitator_headers(),
        timeout=10,
    )
    assert response.json()["isValid"] is False
    assert response.json()["invalidReason"] == "unsupported_scheme"
