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
first, ``exact`` when that is all the server offers) and sending the request again; the
answer streams through untouched. A ``Wallet`` holds the key, the allowed asset, the
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
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Final, Literal, NoReturn, TypeAlias, cast

import anyio
import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402 import x402Client, x402ClientSync
from x402.http import x402HTTPClientSync
from x402.http.clients.httpx import PaymentError as SDKPaymentError
from x402.http.clients.httpx import x402AsyncTransport
from x402.http.utils import decode_payment_response_header
from x402.http.x402_http_client import PaymentRoundTripper
from x402.mechanisms.evm.exact import ExactEvmClientScheme
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import (
    NoMatchingRequirementsError,
    PaymentCreatedContext,
    PaymentCreationContext,
    PaymentCreationFailureContext,
    PaymentRequirements,
)
from x402.schemas.v1 import PaymentRequirementsV1

from x402_meter.assets import Asset, default_asset
from x402_meter.chain_proof import ChainProver, Permit2Authorization
from x402_meter.errors import (
    ConfigurationError,
    NoPayableOfferError,
    PayerError,
    ReceiptUnavailableError,
    SpendCapExceededError,
    X402MeterError,
)
from x402_meter.pricing import PriceInput, parse_price

__all__ = [
    "NoPayableOfferError",
    "PayerError",
    "PayingAsyncClient",
    "PayingAsyncTransport",
    "PayingClient",
    "PayingTransport",
    "Payment",
    "PaymentListener",
    "PaymentStage",
    "Receipt",
    "ReceiptUnavailableError",
    "SpendCapExceededError",
    "Wallet",
]

AmountInput: TypeAlias = PriceInput
"""An amount of the asset as the user gives it: ``"0.05"``, ``1`` or a ``Decimal``."""
PaymentStage = Literal["required", "signed", "answered", "receipt"]
"""``required``: a 402 arrived and the wallet will pay one of its offers (within the caps);
``signed``: the authorization is signed; ``answered``: the server answered the paid request
(``status_code`` 402 means it refused the payment); ``receipt``: a receipt was fetched."""
PaymentListener: TypeAlias = Callable[[PaymentStage, "Payment"], None]
"""Called as a payment moves through its stages, in the task or thread that pays."""
RequirementsView: TypeAlias = PaymentRequirements | PaymentRequirementsV1

DEFAULT_SCHEMES: Final = ("upto", "exact")
DEFAULT_RECEIPT_WAIT: Final = 10.0
RECEIPT_HEADER: Final = "x-payment-receipt"
_LOG: Final = logging.getLogger(__name__)
_FINAL_STATUSES: Final = frozenset({"settled", "failed", "not_charged"})


# -- what the caller gets back ----------------------------------------------------------------


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

    @property
    def is_final(self) -> bool:
        """Settled, failed or not charged: it will not change any more."""
        return self.status in _FINAL_STATUSES

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Receipt:
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
    """The authorized maximum, in atomic units (an ``exact`` payment's price)."""
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

    @property
    def spend(self) -> int:
        """What counts against ``max_total``: the authorized maximum (a signed authorization
        stays usable until its deadline, so a refused one still counts) until the chain
        proves the actual charge. The receipt's ``amount`` never lowers it."""
        return self.max_amount if self.proven_amount is None else self.proven_amount


# -- the wallet --------------------------------------------------------------------------------


def _atomic_cap(value: AmountInput | None, name: str, decimals: int) -> int | None:
    if value is None:
        return None
    amount = parse_price(value, name=name)
    return int(amount.scaleb(decimals).to_integral_value(ROUND_FLOOR))


def _chain_id(network: str) -> int:
    reference = network.removeprefix("eip155:")
    if not (reference.isascii() and reference.isdigit()):
        raise ConfigurationError(f"network must be eip155:<chain id>, got {network!r}")
    return int(reference)


class _Attempt:
    """One request through a paying transport; found by the SDK hooks via a context variable."""

    def __init__(self, method: str, url: str, resolve: Callable[[], Awaitable[None] | None]):
        self.method = method
        self.url = url
        self.resolve = resolve
        self.payment: Payment | None = None


_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "x402_meter_client_attempt", default=None
)


class Wallet:
    """A signer, the asset it pays in, its caps, and the record of its payments.

    Args:
        private_key: the payer's key (hex string) or an ``eth_account`` ``LocalAccount``.
        network: the CAIP-2 network it pays on, e.g. ``"eip155:8453"`` (Base).
        asset: the only token it pays with; None: the network's USDC.
        max_per_request: the most one authorization may cover, in units of the asset
            (default ``"1"``, the x402 SDK's own default of one dollar); None: no cap.
        max_total: the most all its payments together may cost; None: no cap.
        schemes: the x402 schemes it signs, preferred in this order.
        receipt_wait: seconds to wait for outstanding receipts before refusing for
            ``max_total``.
        on_payment: called at each ``PaymentStage`` of each payment.
        rpc_url: a JSON-RPC endpoint of ``network`` that the payer trusts (not the
            seller's). Settlements read from it lower what a payment counts against
            ``max_total`` to what actually moved; None: every payment counts at its maximum.

    Thread-safe; share one wallet between clients to share its caps.
    """

    def __init__(
        self,
        private_key: str | LocalAccount,
        *,
        network: str,
        asset: Asset | None = None,
        max_per_request: AmountInput | None = "1",
        max_total: AmountInput | None = None,
        schemes: Sequence[str] = DEFAULT_SCHEMES,
        receipt_wait: float = DEFAULT_RECEIPT_WAIT,
        on_payment: PaymentListener | None = None,
        rpc_url: str | None = None,
    ) -> None:
        if isinstance(private_key, str):
            try:
                account: LocalAccount = Account.from_key(private_key)
            except (ValueError, TypeError) as exc:
                raise ConfigurationError("private_key must be a 32-byte hex key") from exc
        else:
            account = private_key
        if not isinstance(network, str) or not network.startswith("eip155:"):
            raise ConfigurationError(f"network must be a CAIP-2 EVM id, got {network!r}")
        unknown = set(schemes) - set(DEFAULT_SCHEMES)
        if not schemes or unknown:
            raise ConfigurationError(f"schemes must be among {DEFAULT_SCHEMES}, got {schemes!r}")
        self.account = account
        self.network = network
        self.asset = asset if asset is not None else default_asset(network)
        self.max_per_request = _atomic_cap(max_per_request, "max_per_request", self.asset.decimals)
        """Atomic units, or None."""
        self.max_total = _atomic_cap(max_total, "max_total", self.asset.decimals)
        """Atomic units, or None."""
        self.schemes = tuple(schemes)
        self.receipt_wait = receipt_wait
        self.on_payment = on_payment
        self.prover = (
            None
            if rpc_url is None
            else ChainProver(rpc_url, chain_id=_chain_id(network), asset=self.asset.address)
        )
        """Reads settlements from ``rpc_url``; None without one."""
        self._lock = threading.Lock()
        self._payments: list[Payment] = []
        self._async_client: x402Client | None = None
        self._sync_client: x402ClientSync | None = None

    @property
    def address(self) -> str:
        return str(self.account.address)

    @property
    def payments(self) -> tuple[Payment, ...]:
        """Every payment signed so far, oldest first."""
        with self._lock:
            return tuple(self._payments)

    @property
    def spent(self) -> int:
        """Atomic units counted against ``max_total`` (see ``Payment.spend``)."""
        with self._lock:
            return sum(payment.spend for payment in self._payments)

    def to_decimal(self, atomic: int) -> Decimal:
        """Atomic units as an amount of the asset: ``124`` -> ``Decimal("0.000124")``."""
        return Decimal(atomic).scaleb(-self.asset.decimals)

    # -- the x402 SDK clients the transports pay with ----------------------------------------

    def x402_client(self) -> x402Client:
        """The SDK's async client: this wallet's schemes, spend controls, policy and hooks."""
        if self._async_client is None:
            client = x402Client()
            self._configure(client)
            client.on_before_payment_creation(self._before_async)
            client.on_after_payment_creation(self._after)
            client.on_payment_creation_failure(self._failed)
            self._async_client = client
        return self._async_client

    def x402_client_sync(self) -> x402ClientSync:
        """The SDK's sync client, configured like ``x402_client``."""
        if self._sync_client is None:
            client = x402ClientSync()
            self._configure(client)
            client.on_before_payment_creation(self._before_sync)
            client.on_after_payment_creation(self._after)
            client.on_payment_creation_failure(self._failed)
            self._sync_client = client
        return self._sync_client

    def _configure(self, client: x402Client | x402ClientSync) -> None:
        signer = EthAccountSigner(self.account)
        for scheme in self.schemes:
            kind = UptoEvmClientScheme if scheme == "upto" else ExactEvmClientScheme
            client.register(self.network, kind(signer))
        # The SDK allows only listed (and well-known) assets; the caps are this wallet's,
        # checked in its policy so the refusal can say which cap and by how much.
        client.set_spend_controls(
            {
                "allowed_assets": [{"network": self.network, "asset": self.asset.address}],
                "max_amount_per_payment": False,
            }
        )
        client.register_policy(self._policy)

    # -- the steps of one payment ---------------------------------------------------------------

    def _policy(self, version: int, offers: list[RequirementsView]) -> list[RequirementsView]:
        """Keep the offers in this wallet's network and asset, within ``max_per_request``;
        ``upto`` first (it charges only what is used), then the cheapest."""
        asset = self.asset.address.lower()
        payable = [
            offer
            for offer in offers
            if offer.network == self.network
            and offer.asset.lower() == asset
            and offer.scheme in self.schemes
            and offer.get_amount().isdigit()
        ]
        if not payable:
            seen = ", ".join(f"{o.scheme} {o.asset} on {o.network}" for o in offers)
            raise NoPayableOfferError(
                f"no offer this wallet pays ({', '.join(self.schemes)} in {self.asset.address}"
                f" on {self.network}); offered: {seen or 'nothing'}"
            )
        cap = self.max_per_request
        within = [o for o in payable if cap is None or int(o.get_amount()) <= cap]
        if cap is not None and not within:
            cheapest = min(int(o.get_amount()) for o in payable)
            raise SpendCapExceededError(
                "max_per_request",
                requested=cheapest,
                limit=cap,
                left=cap,
                decimals=self.asset.decimals,
            )
        rank = {scheme: index for index, scheme in enumerate(self.schemes)}
        return sorted(within, key=lambda o: (rank[o.scheme], int(o.get_amount())))

    def _reserve(self, offer: RequirementsView, attempt: _Attempt) -> int | None:
        """Record the payment if ``max_total`` allows it; else what it still allows."""
        amount = int(offer.get_amount())
        with self._lock:
            spent = sum(payment.spend for payment in self._payments)
            if self.max_total is not None and spent + amount > self.max_total:
                return max(self.max_total - spent, 0)
            payment = Payment(
                method=attempt.method,
                url=attempt.url,
                scheme=offer.scheme,
                network=offer.network,
                asset=offer.asset,
                pay_to=offer.pay_to,
                payer=self.address,
                max_amount=amount,
            )
            self._payments.append(payment)
        attempt.payment = payment
        return None

    def _refuse_total(self, offer: RequirementsView, left: int) -> SpendCapExceededError:
        assert self.max_total is not None
        return SpendCapExceededError(
            "max_total",
            requested=int(offer.get_amount()),
            limit=self.max_total,
            left=left,
            decimals=self.asset.decimals,
        )

    def _unproven(self) -> list[Payment]:
        """Signed ``upto`` payments that the chain may yet prove cheaper than their maximum
        (none without ``rpc_url``: then nothing can lower what they count)."""
        if self.prover is None:
            return []
        with self._lock:
            return [
                p
                for p in self._payments
                if p.signed and p.authorization is not None and p.proven_amount is None
            ]

    def _prove(self, payment: Payment) -> None:
        """Read the payment's settlement from the chain (blocking): its claimed transaction
        if that proves it, else whether its authorization expired unused. Unreadable or
        unproven, it keeps counting at its maximum."""
        prover, authorization = self.prover, payment.authorization
        if prover is None or authorization is None or payment.proven_amount is not None:
            return
        try:
            if payment.transaction is not None:
                amount = prover.settled_amount(authorization, payment.transaction)
                if amount is not None:
                    payment.proof = payment.transaction
                    payment.proven_amount = amount
                    return
            if prover.expired_unused(authorization):  # the chain's clock, not this machine's
                payment.proven_amount = 0
        except ConfigurationError:
            raise
        except Exception as error:  # any failure to read leaves it unproven: fail closed
            _LOG.warning(
                "could not read the settlement for %s from the chain: %s", payment.url, error
            )

    def _needs_receipt(self, payment: Payment) -> bool:
        """The seller has not named a settlement yet: its receipt may."""
        return (
            payment.transaction is None and payment.receipt_url is not None and not _final(payment)
        )

    async def _before_async(self, context: PaymentCreationContext) -> None:
        attempt = _current_attempt()
        offer = context.selected_requirements
        left = self._reserve(offer, attempt)
        if left is not None and self._unproven():
            resolved = attempt.resolve()
            if resolved is not None:
                await resolved
            left = self._reserve(offer, attempt)
        if left is not None:
            raise self._refuse_total(offer, left)
        self._emit("required", attempt)

    def _before_sync(self, context: PaymentCreationContext) -> None:
        attempt = _current_attempt()
        offer = context.selected_requirements
        left = self._reserve(offer, attempt)
        if left is not None and self._unproven():
            attempt.resolve()
            left = self._reserve(offer, attempt)
        if left is not None:
            raise self._refuse_total(offer, left)
        self._emit("required", attempt)

    def _after(self, context: PaymentCreatedContext) -> None:
        attempt = _current_attempt()
        payment = attempt.payment
        if payment is not None:
            if payment.scheme == "upto":
                payment.authorization = _own_authorization(context.payment_payload.payload, self)
            payment.signed = True
            self._emit("signed", attempt)

    def _failed(self, context: PaymentCreationFailureContext) -> None:
        attempt = _current_attempt()
        self._forget(attempt)

    def _forget(self, attempt: _Attempt) -> None:
        """Nothing was signed for this attempt: give its reservation back."""
        payment = attempt.payment
        if payment is not None and not payment.signed:
            with self._lock:
                if payment in self._payments:
                    self._payments.remove(payment)
            attempt.payment = None

    def _answered(
        self, attempt: _Attempt, request: httpx.Request, response: httpx.Response
    ) -> None:
        payment = attempt.payment
        if payment is None or not payment.signed:
            return
        payment.status_code = response.status_code
        path = response.headers.get(RECEIPT_HEADER)
        if path:
            payment.receipt_url = str(request.url.join(path))
        settled = response.headers.get("payment-response") or response.headers.get(
            "x-payment-response"
        )
        if settled:
            with contextlib.suppress(ValueError):
                payment.transaction = decode_payment_response_header(settled).transaction or None
        self._emit("answered", attempt)

    def _received(self, payment: Payment, receipt: Receipt) -> None:
        payment.receipt = receipt
        if receipt.transaction:
            payment.transaction = receipt.transaction
        if self.on_payment is not None:
            self.on_payment("receipt", payment)

    def _emit(self, stage: PaymentStage, attempt: _Attempt) -> None:
        if self.on_payment is not None and attempt.payment is not None:
            self.on_payment(stage, attempt.payment)


def _own_authorization(payload: Mapping[str, Any], wallet: Wallet) -> Permit2Authorization | None:
    """The signed authorization, if it is this wallet's own Permit2 one in its asset (else
    nothing the chain shows can lower what the payment counts)."""
    authorization = Permit2Authorization.from_payload(payload)
    if authorization is None or authorization.owner.lower() != wallet.address.lower():
        return None
    if authorization.token.lower() != wallet.asset.address.lower():
        return None
    return authorization


def _final(payment: Payment) -> bool:
    return payment.receipt is not None and payment.receipt.is_final


def _current_attempt() -> _Attempt:
    attempt = _ATTEMPT.get()
    if attempt is None:  # the SDK client used directly, not through a paying transport
        attempt = _Attempt("", "", lambda: None)
        _ATTEMPT.set(attempt)
    return attempt


def _raise_unwrapped(error: BaseException) -> NoReturn:
    """Raise what stopped a payment: our error or httpx's as it was, else a ``PayerError``
    (the SDK's transport wraps whatever it meets in its own ``PaymentError``)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, X402MeterError | httpx.HTTPError):
            raise seen  # chained to ``error`` as its context; Python cuts the cycle
        if isinstance(seen, NoMatchingRequirementsError):
            raise NoPayableOfferError(str(seen)) from error
        seen = seen.__cause__ or seen.__context__
    raise PayerError(f"payment failed: {error}") from error


def _receipt_request(payment: Payment | None, wait: float) -> httpx.Request:
    if payment is None:
        raise ReceiptUnavailableError("no payment yet")
    if payment.receipt_url is None:
        raise ReceiptUnavailableError(
            f"the answer to {payment.method} {payment.url} carried no {RECEIPT_HEADER} header"
        )
    url = httpx.URL(payment.receipt_url).copy_merge_params({"wait": f"{wait:g}"})
    timeout = {"connect": 10.0, "read": wait + 30.0, "write": 10.0, "pool": 10.0}
    return httpx.Request("GET", url, extensions={"timeout": timeout})


def _parse_receipt(url: httpx.URL, response: httpx.Response, body: bytes) -> Receipt:
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


# -- transports ----------------------------------------------------------------------------


class PayingAsyncTransport(httpx.AsyncBaseTransport):
    """An httpx async transport that pays 402s from ``wallet`` (the SDK's
    ``x402AsyncTransport`` underneath) and records each payment's receipt."""

    def __init__(self, wallet: Wallet, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.wallet = wallet
        self._base = transport or httpx.AsyncHTTPTransport()
        self._paying = x402AsyncTransport(wallet.x402_client(), self._base)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        attempt = _Attempt(request.method, str(request.url), self._resolve_pending)
        token = _ATTEMPT.set(attempt)
        try:
            response = await self._paying.handle_async_request(request)
        except SDKPaymentError as error:
            self.wallet._forget(attempt)
            _raise_unwrapped(error)
        except BaseException:
            self.wallet._forget(attempt)
            raise
        finally:
            _ATTEMPT.reset(token)
        self.wallet._answered(attempt, request, response)
        return response

    async def fetch_receipt(self, payment: Payment, wait: float = DEFAULT_RECEIPT_WAIT) -> Receipt:
        """GET the payment's receipt, waiting up to ``wait`` seconds for settlement."""
        request = _receipt_request(payment, wait)
        response = await self._base.handle_async_request(request)
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        receipt = _parse_receipt(request.url, response, body)
        self.wallet._received(payment, receipt)
        if self.wallet.prover is not None:
            await anyio.to_thread.run_sync(self.wallet._prove, payment)
        return receipt

    async def _resolve_pending(self) -> None:
        """Read what the chain proves of the unproven payments (their receipts first, for the
        transaction, when the seller has not named one yet)."""
        for payment in self.wallet._unproven():
            if self.wallet._needs_receipt(payment):
                with contextlib.suppress(ReceiptUnavailableError, httpx.HTTPError):
                    await self.fetch_receipt(payment, self.wallet.receipt_wait)
                    continue
            await anyio.to_thread.run_sync(self.wallet._prove, payment)

    async def aclose(self) -> None:
        await self._paying.aclose()


class PayingTransport(httpx.BaseTransport):
    """The sync counterpart of ``PayingAsyncTransport`` (the SDK's sync x402 client and
    ``PaymentRoundTripper`` underneath), for ``httpx.Client`` and ``openai.OpenAI``."""

    def __init__(self, wallet: Wallet, transport: httpx.BaseTransport | None = None) -> None:
        self.wallet = wallet
        self._base = transport or httpx.HTTPTransport()
        self._round_trip = PaymentRoundTripper(x402HTTPClientSync(wallet.x402_client_sync()))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # a 402 means sending the body again
        attempt = _Attempt(request.method, str(request.url), self._resolve_pending)
        token = _ATTEMPT.set(attempt)
        try:
            response = self._pay(request, attempt)
        except (PayerError, httpx.HTTPError):
            self.wallet._forget(attempt)
            raise
        except Exception as error:
            self.wallet._forget(attempt)
            _raise_unwrapped(error)
        finally:
            _ATTEMPT.reset(token)
        self.wallet._answered(attempt, request, response)
        return response

    def _pay(self, request: httpx.Request, attempt: _Attempt) -> httpx.Response:
        response = self._base.handle_request(request)
        if response.status_code != 402:
            return response
        try:
            body = response.read()
        finally:
            response.close()

        def send_again(headers: dict[str, str]) -> httpx.Response:
            return self._base.handle_request(
                httpx.Request(
                    request.method,
                    request.url,
                    headers={**request.headers, **headers},
                    content=request.content,
                    extensions=request.extensions,
                )
            )

        paid = self._round_trip.handle_response(
            str(id(attempt)),
            402,
            dict(response.headers),
            body,
            send_again,
            str(request.url),
        )
        return cast(httpx.Response, paid) if paid is not None else response

    def fetch_receipt(self, payment: Payment, wait: float = DEFAULT_RECEIPT_WAIT) -> Receipt:
        """GET the payment's receipt, waiting up to ``wait`` seconds for settlement."""
        request = _receipt_request(payment, wait)
        response = self._base.handle_request(request)
        try:
            body = response.read()
        finally:
            response.close()
        receipt = _parse_receipt(request.url, response, body)
        self.wallet._received(payment, receipt)
        self.wallet._prove(payment)
        return receipt

    def _resolve_pending(self) -> None:
        """See ``PayingAsyncTransport._resolve_pending``."""
        for payment in self.wallet._unproven():
            if self.wallet._needs_receipt(payment):
                with contextlib.suppress(ReceiptUnavailableError, httpx.HTTPError):
                    self.fetch_receipt(payment, self.wallet.receipt_wait)
                    continue
            self.wallet._prove(payment)

    def close(self) -> None:
        self._base.close()


# -- clients -----------------------------------------------------------------------------------


_DEFAULT_TIMEOUT: Final = 60.0
"""Seconds; httpx's own 5 s is too short for a model's first token after a payment."""


def _client_wallet(
    private_key: str | LocalAccount | None,
    *,
    wallet: Wallet | None,
    network: str | None,
    asset: Asset | None,
    max_per_request: AmountInput | None,
    max_total: AmountInput | None,
    on_payment: PaymentListener | None,
    rpc_url: str | None,
) -> Wallet:
    """The wallet a paying client pays from: ``wallet`` as given, else one built from the
    key and the ``Wallet`` options (the one place both clients check these arguments)."""
    if wallet is not None:
        if private_key is not None or rpc_url is not None:
            raise ConfigurationError("pass private_key (and network, rpc_url) or wallet, not both")
        return wallet
    if private_key is None or network is None:
        raise ConfigurationError("pass private_key and network, or wallet=Wallet(...)")
    return Wallet(
        private_key,
        network=network,
        asset=asset,
        max_per_request=max_per_request,
        max_total=max_total,
        on_payment=on_payment,
        rpc_url=rpc_url,
    )


class _WalletPayments:
    """What both paying clients tell of their wallet's payments."""

    wallet: Wallet

    @property
    def payments(self) -> tuple[Payment, ...]:
        """The wallet's payments, oldest first."""
        return self.wallet.payments

    @property
    def last_payment(self) -> Payment | None:
        payments = self.wallet.payments
        return payments[-1] if payments else None

    def payment_of(self, response: httpx.Response) -> Payment | None:
        """The payment made for ``response`` (found by its receipt header), if it was paid:
        for requests running at once, where ``last_payment`` may be another one's."""
        path = response.headers.get(RECEIPT_HEADER)
        if not path:
            return None
        url = str(response.request.url.join(path))
        return next((p for p in reversed(self.wallet.payments) if p.receipt_url == url), None)


class PayingAsyncClient(_WalletPayments, httpx.AsyncClient):
    """``httpx.AsyncClient`` that pays x402 402s; give it to ``openai.AsyncOpenAI``.

    ``PayingAsyncClient(key, network="eip155:8453")`` pays in the network's USDC; the keyword
    arguments after ``network`` are ``Wallet``'s; ``wallet=`` shares one wallet (and its
    caps) between clients; ``transport`` is the transport it sends through; anything else goes
    to ``httpx.AsyncClient`` (the default timeout is 60 s).
    """

    def __init__(
        self,
        private_key: str | LocalAccount | None = None,
        *,
        network: str | None = None,
        asset: Asset | None = None,
        max_per_request: AmountInput | None = "1",
        max_total: AmountInput | None = None,
        wallet: Wallet | None = None,
        on_payment: PaymentListener | None = None,
        rpc_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **httpx_options: Any,
    ) -> None:
        self.wallet = _client_wallet(
            private_key,
            wallet=wallet,
            network=network,
            asset=asset,
            max_per_request=max_per_request,
            max_total=max_total,
            on_payment=on_payment,
            rpc_url=rpc_url,
        )
        self.paying_transport = PayingAsyncTransport(self.wallet, transport)
        httpx_options.setdefault("timeout", _DEFAULT_TIMEOUT)
        super().__init__(transport=self.paying_transport, **httpx_options)

    async def receipt(
        self, payment: Payment | None = None, *, wait: float = DEFAULT_RECEIPT_WAIT
    ) -> Receipt:
        """The receipt of ``payment`` (default: the last one), waiting up to ``wait`` seconds
        (the server allows at most 30) for it to be settled. Read streams to the end first:
        a stream is charged when it closes."""
        payment = payment or self.last_payment
        return await self.paying_transport.fetch_receipt(_required(payment), wait)


class PayingClient(_WalletPayments, httpx.Client):
    """``httpx.Client`` that pays x402 402s; give it to ``openai.OpenAI``.

    The same arguments as ``PayingAsyncClient``, with a sync ``transport``.
    """

    def __init__(
        self,
        private_key: str | LocalAccount | None = None,
        *,
        network: str | None = None,
        asset: Asset | None = None,
        max_per_request: AmountInput | None = "1",
        max_total: AmountInput | None = None,
        wallet: Wallet | None = None,
        on_payment: PaymentListener | None = None,
        rpc_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
        **httpx_options: Any,
    ) -> None:
        self.wallet = _client_wallet(
            private_key,
            wallet=wallet,
            network=network,
            asset=asset,
            max_per_request=max_per_request,
            max_total=max_total,
            on_payment=on_payment,
            rpc_url=rpc_url,
        )
        self.paying_transport = PayingTransport(self.wallet, transport)
        httpx_options.setdefault("timeout", _DEFAULT_TIMEOUT)
        super().__init__(transport=self.paying_transport, **httpx_options)

    def receipt(
        self, payment: Payment | None = None, *, wait: float = DEFAULT_RECEIPT_WAIT
    ) -> Receipt:
        """The receipt of ``payment`` (default: the last one); see
        ``PayingAsyncClient.receipt``."""
        payment = payment or self.last_payment
        return self.paying_transport.fetch_receipt(_required(payment), wait)


def _required(payment: Payment | None) -> Payment:
    if payment is None:
        raise ReceiptUnavailableError("no payment yet")
    return payment
