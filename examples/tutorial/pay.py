"""Pay for a chat answer with x402: the official ``openai`` package, through x402-meter's
paying client, which answers the server's 402 by signing (never above its caps).

Run it with ``python pay.py`` while server.py serves, with the ``X402_...`` variables that
``x402-meter dev`` prints (see docs/first-endpoint.md).
"""

import os
from decimal import Decimal

import openai

from x402_meter import Asset
from x402_meter.client import PayingClient


def asset_from_env() -> Asset | None:
    """The token to pay in: ``X402_ASSET`` if set (the local stack's test USDC), else
    None, which means the network's USDC."""
    address = os.environ.get("X402_ASSET")
    if not address:
        return None
    return Asset(
        address,
        os.environ.get("X402_ASSET_NAME", "USD Coin"),
        os.environ.get("X402_ASSET_VERSION", "2"),
        int(os.environ.get("X402_ASSET_DECIMALS", "6")),
    )


asset = asset_from_env()
http = PayingClient(
    os.environ["X402_PAYER_PRIVATE_KEY"],  # the payer's key: it signs, it never leaves here
    network=os.environ["X402_NETWORK"],
    asset=asset,
    max_per_request="0.01",  # USDC: never authorize more for one answer
    max_total="0.10",  # USDC: nor more than this in all
    rpc_url=os.environ.get("X402_RPC_URL"),  # where max_total reads what was really settled
)
llm = openai.OpenAI(
    base_url=os.environ.get("LLM_BASE_URL", "http://127.0.0.1:8000/v1"),
    api_key="x402",  # unused: the payment is the credential
    http_client=http,
)

stream = llm.chat.completions.create(
    model="local-stub",
    messages=[{"role": "user", "content": "What is x402?"}],
    stream=True,
)
for chunk in stream:
    for choice in chunk.choices:
        print(choice.delta.content or "", end="", flush=True)
print()

receipt = http.receipt(wait=30)  # the server settles after the stream: wait for it
decimals = asset.decimals if asset else 6
cost = Decimal(receipt.amount or 0).scaleb(-decimals)
print(
    f"receipt: {receipt.status}, {receipt.input_tokens} tokens in"
    f" + {receipt.output_tokens} out = {cost:f} USDC"
)
print(f"transaction: {receipt.transaction}")
