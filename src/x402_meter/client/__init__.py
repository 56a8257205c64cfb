"""Pay for x402-metered APIs from Python: httpx clients (and so the ``openai`` package) that pay.

::

    import openai
    from x402_meter.client import PayingAsyncClient

    http = PayingAsyncClient(private_key, network="eip155:8453", max_per_request="0.05",
                             max_total="5", rpc_url="https://mainnet.base.org")
    llm = openai.AsyncOpenAI(base_url="https://llm.example/v1", api_key="x402", http_client=http)
    stream = await llm.chat.completions.create(model=..., messages=..., stream=True)
    ...
    receipt = await http.receipt()  # the last call's: tokens, amount, transaction

A 402 with x402 requirements is answered by signing with the official x402 SDK (``upto``
first, ``exact`` when that is all the server offers; sessions, ``batch-settlement``, first
when the wallet's ``schemes`` name them) and sending the request again; the answer streams
through untouched. A ``Wallet`` holds the key, the allowed asset, the
caps and the record of every payment; ``PayingAsyncClient`` and ``PayingClient``
are ``httpx.AsyncClient``/``httpx.Client`` with a wallet, and ``PayingAsyncTransport``
and ``PayingTransport`` put one under any httpx client.

Caps, in units of the asset (``"0.05"`` is 5 cents of USDC): ``max_per_request`` bounds what
one authorization may cover; ``max_total`` bounds everything the wallet signs. A payment
counts for its authorized maximum until its settlement transaction, read from the chain
through ``rpc_url`` (the payer's own RPC endpoint), proves a lower amount; a receipt is the
seller's word and never lowers the count, so without ``rpc_url`` a payment counts at its
maximum for good. Above a cap the client refuses to sign and raises
``SpendCapExceededError``, after first reading the settlements still unproven from the
chain (an ``upto`` charge is usually far below its maximum).

The package, httpx-style: ``_receipts`` (``Payment``, ``Receipt``), ``_ledger`` (the wallet's
record of its payments, the public interface the transports use), ``_sessions`` (the
wallet's payment channels, leased one request at a time), ``_session_scheme`` (the SDK
client scheme that signs on them), ``_wallet``, ``_attempt``
(the one context variable that threads a request into the SDK's hooks), ``_transports`` (sync
and async on one core), ``_clients``, and ``chain_proof`` (what the chain proves was paid).
Its errors are in ``x402_meter.errors``, re-exported here.
"""

from x402_meter.client._clients import PayingAsyncClient, PayingClient
from x402_meter.client._exceptions import (
    NoPayableOfferError,
    PayerError,
    ReceiptUnavailableError,
    SessionReceiptError,
    SessionRefundError,
    SpendCapExceededError,
)
from x402_meter.client._ledger import PaymentLedger
from x402_meter.client._receipts import (
    DEFAULT_RECEIPT_WAIT,
    RECEIPT_HEADER,
    Payment,
    PaymentListener,
    PaymentStage,
    Receipt,
)
from x402_meter.client._sessions import (
    DEFAULT_MAX_SESSIONS,
    ChannelBalance,
    ChannelRefund,
)
from x402_meter.client._transports import PayingAsyncTransport, PayingTransport
from x402_meter.client._wallet import DEFAULT_SCHEMES, AmountInput, Wallet

__all__ = [
    "DEFAULT_MAX_SESSIONS",
    "DEFAULT_RECEIPT_WAIT",
    "DEFAULT_SCHEMES",
    "RECEIPT_HEADER",
    "AmountInput",
    "ChannelBalance",
    "ChannelRefund",
    "NoPayableOfferError",
    "PayerError",
    "PayingAsyncClient",
    "PayingAsyncTransport",
    "PayingClient",
    "PayingTransport",
    "Payment",
    "PaymentLedger",
    "PaymentListener",
    "PaymentStage",
    "Receipt",
    "ReceiptUnavailableError",
    "SessionReceiptError",
    "SessionRefundError",
    "SpendCapExceededError",
    "Wallet",
]
