"""What the caller gets back: a ``Payment`` per signed authorization and the seller's ``Receipt``.

Also the two halves of fetching a receipt that do no I/O (building the request, reading the
answer), so that the sync and the async transport share them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

import httpx

from x402_meter.client._exceptions import ReceiptUnavailableError
from x402_meter.client.chain_proof import Permit2Authorization

PaymentStage = Literal["required", "signed", "answered", "receipt"]
"""``required``: a 402 arrived and the wallet will pay one of its offers (within the caps);
``signed``: the authorization is signed; ``answered``: the server answered the paid request
(``status_code`` 402 means it refused the payment); ``receipt``: a receipt was fetched."""
PaymentListener: TypeAlias = Callable[[PaymentStage, "Payment"], None]
"""Called as a payment moves through its stages, in the task or thread that pays."""

DEFAULT_RECEIPT_WAIT: Final = 10.0
SESSION_SCHEME: Final = "batch-settlement"
RECEIPT_HEADER: Final = "x-payment-receipt"
_FINAL_STATUSES: Final = frozenset({"settled", "failed", "not_charged"})


def seller_amount(value: Any) -> int | None:
    """An amount the seller names in a session's answer (a string of ASCII digits:
    ``"²".isdigit()`` is True and ``int("²")`` fails); None for anything else."""
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Receipt:
    """An x402-meter receipt (``GET /x402/receipts/<id>``). Amounts in atomic units."""

    status: str
    """``pending``, ``settled``, ``failed`` or ``not_charged``."""
    amount: int | None
    max_amount: int | None
    input_tokens: int | None
    output_tokens: int | None
    usage_source: str | None
    transaction: str | None
    payer: str | None
    pay_to: str | None
    asset: str | None
    network: str | None
    scheme: str | None
    error: str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    """The receipt's JSON as served."""
    channel_id: str | None = None
    """A session's answer: the channel it was charged on."""
    charged_cumulative: int | None = None
    """A session's answer, once charged: the channel's charged cumulative after it."""

    @property
    def is_final(self) -> bool:
        """Settled, failed or not charged: it will not change any more."""
        return self.status in _FINAL_STATUSES

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Receipt:
        channel = body.get("channel")
        channel = channel if isinstance(channel, dict) else {}
        return cls(
            status=str(body.get("status", "unknown")),
            amount=_int_or_none(body.get("amount")),
            max_amount=_int_or_none(body.get("max_amount")),
            input_tokens=_int_or_none(body.get("input_tokens")),
            output_tokens=_int_or_none(body.get("output_tokens")),
            usage_source=_str_or_none(body.get("usage_source")),
            transaction=_str_or_none(body.get("transaction")),
            payer=_str_or_none(body.get("payer")),
            pay_to=_str_or_none(body.get("pay_to")),
            asset=_str_or_none(body.get("asset")),
            network=_str_or_none(body.get("network")),
            scheme=_str_or_none(body.get("scheme")),
            error=_str_or_none(body.get("error")),
            raw=dict(body),
            channel_id=_str_or_none(channel.get("id")),
            charged_cumulative=_int_or_none(channel.get("charged_cumulative")),
        )


@dataclass(slots=True, eq=False)
class Payment:
    """One payment the wallet made: what it authorized, and what became of it."""

    method: str
    url: str
    scheme: str
    network: str
    asset: str
    pay_to: str
    payer: str
    max_amount: int
    """The authorized maximum, in atomic units (an ``exact`` payment's price; a session
    voucher's increment: what the answer may cost at most)."""
    signed: bool = False
    status_code: int | None = None
    """The server's answer to the paid request (None: not answered yet, or the request failed)."""
    receipt_url: str | None = None
    """Where x402-meter serves this payment's receipt (its ``X-Payment-Receipt`` header)."""
    receipt: Receipt | None = None
    """The receipt as last fetched."""
    transaction: str | None = None
    """The settlement transaction as the seller tells it (receipt or ``PAYMENT-RESPONSE``
    header): a claim until the chain proves it (``proven_amount``)."""
    authorization: Permit2Authorization | None = None
    """What an ``upto`` settlement must consume (Permit2 nonce, owner, token, deadline);
    None for ``exact``, whose maximum is its price."""
    proven_amount: int | None = None
    """What the chain proves this payment cost (atomic units): the payer's transfer in its
    settlement transaction, or 0 once its authorization expired unused. None: unproven."""
    proof: str | None = None
    """The settlement transaction read from the chain that proved ``proven_amount``."""
    channel_id: str | None = None
    """A session (``batch-settlement``) payment: the channel its voucher is for."""
    deposit: int | None = None
    """A session payment that deposits into its channel: how much (atomic units)."""
    cumulative: int | None = None
    """A session payment: the cumulative its voucher signed (the channel's charged amount
    before it plus ``max_amount``)."""

    @property
    def spend(self) -> int:
        """What counts against ``max_total``: the authorized maximum (a signed authorization
        stays usable until its deadline, so a refused one still counts) until the chain
        proves the actual charge. The receipt's ``amount`` never lowers it. A session
        payment counts its deposit (money that left the wallet), and a voucher nothing more:
        it is paid from what was deposited."""
        if self.scheme == SESSION_SCHEME:
            return self.deposit or 0
        return self.max_amount if self.proven_amount is None else self.proven_amount


def required(payment: Payment | None) -> Payment:
    """``payment``, or ``ReceiptUnavailableError`` when there is none yet."""
    if payment is None:
        raise ReceiptUnavailableError("no payment yet")
    return payment


def receipt_request(payment: Payment | None, wait: float) -> httpx.Request:
    """The GET of ``payment``'s receipt that waits up to ``wait`` seconds for settlement."""
    payment = required(payment)
    if payment.receipt_url is None:
        raise ReceiptUnavailableError(
            f"the answer to {payment.method} {payment.url} carried no {RECEIPT_HEADER} header"
        )
    url = httpx.URL(payment.receipt_url).copy_merge_params({"wait": f"{wait:g}"})
    timeout = {"connect": 10.0, "read": wait + 30.0, "write": 10.0, "pool": 10.0}
    return httpx.Request("GET", url, extensions={"timeout": timeout})


def parse_receipt(url: httpx.URL, response: httpx.Response, body: bytes) -> Receipt:
    """The receipt in a 200 JSON answer; ``ReceiptUnavailableError`` for anything else."""
    if response.status_code != 200:
        raise ReceiptUnavailableError(
            f"receipt {url.copy_with(query=None)}: HTTP {response.status_code}"
        )
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ReceiptUnavailableError(f"receipt {url.copy_with(query=None)}: not JSON") from exc
    if not isinstance(data, dict):
        raise ReceiptUnavailableError(f"receipt {url.copy_with(query=None)}: not a JSON object")
    return Receipt.from_json(data)
