"""The gateway is safe by construction: tried against real processes, as an attacker would.

A gateway (``x402-meter gateway`` in its own process) stands in front of the stub upstream
(its own process, recording every request it gets), on the local chain. What the caller
receives, and what the upstream receives, is read byte for byte.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import pytest
from eth_account.signers.local import LocalAccount

from tests.gateway.harness import (
    CHAT,
    QUESTION,
    UPSTREAM_KEY,
    GatewayProcess,
    StubUpstream,
    closed_port,
    gateway_process,
    openai_config,
    paying_client,
)
from x402_meter.devstack import LocalStack, token_balance

pytestmark = pytest.mark.anyio

ALLOWED_PATHS: Final = {"/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/messages"}


def raw_exchange(url: str, request: bytes) -> bytes:
    """Send ``request`` as it is on a new connection; everything that comes back."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def post(target: str, host: str = "gateway.example", method: str = "POST") -> bytes:
    body = json.dumps(QUESTION).encode()
    return (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


@pytest.fixture
def fresh(upstream: StubUpstream) -> StubUpstream:
    """The upstream, with what it recorded so far forgotten."""
    upstream.clear()
    return upstream


# -- no open proxy ----------------------------------------------------------------------------

NOT_ALLOWED: Final = [
    "/v1/chat/completions/../../admin",
    "/v1/chat/../chat/completions",
    "/v1/%2e%2e/v1/chat/completions",
    "/v1%2Fchat%2Fcompletions",
    "/v1/chat/completions%2F..%2F..%2Fadmin",
    "/v1/chat/completions%00",
    "/v1/chat/completions/",
    "//evil.example/v1/chat/completions",
    "/V1/CHAT/COMPLETIONS",
    "/v1/models/../chat/completions",
    "/v1/completions",
    "/admin",
    "/",
    "http://evil.example/admin",
    "*",
]


@pytest.mark.parametrize("target", NOT_ALLOWED)
def test_a_path_not_allowlisted_is_refused_and_never_forwarded(
    gateway: GatewayProcess, fresh: StubUpstream, target: str
) -> None:
    answer = raw_exchange(gateway.url, post(target))
    assert status_of(answer) in (400, 404), answer[:300]
    assert fresh.requests() == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_another_method_on_an_allowlisted_path_is_refused(
    gateway: GatewayProcess, fresh: StubUpstream, method: str
) -> None:
    answer = raw_exchange(gateway.url, post(CHAT, method=method))
    assert status_of(answer) == 404, answer[:300]
    assert fresh.requests() == []


def test_connect_is_refused_and_reaches_nothing(
    gateway: GatewayProcess, fresh: StubUpstream
) -> None:
    request = b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"
    answer = raw_exchange(gateway.url, request)
    assert status_of(answer) in (0, 400, 404, 405), answer[:300]
    assert fresh.requests() == []


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1:1", "169.254.169.254"])
def test_an_absolute_form_target_reaches_nothing_unpaid(
    gateway: GatewayProcess, fresh: StubUpstream, host: str
) -> None:
    answer = raw_exchange(gateway.url, post(f"http://{host}{CHAT}", host=host))
    assert status_of(answer) in (402, 404), answer[:300]
    assert fresh.requests() == []


@pytest.mark.parametrize(
    ("query", "host"),
    [
        ("", "evil.example"),
        ("?url=http://evil.example/&model=other", "gateway.example"),
        ("?path=/admin&base_url=http://169.254.169.254", "localhost"),
    ],
)
async def test_host_headers_and_queries_still_reach_only_the_configured_upstream(
    x402_local_stack: LocalStack,
    gateway: GatewayProcess,
    fresh: StubUpstream,
    payer: LocalAccount,
    query: str,
    host: str,
) -> None:
    """Paid, so forwarded: to the configured URL, without the query, whatever the Host."""
    async with paying_client(x402_local_stack, payer) as client:
        answer = await client.post(
            gateway.url + CHAT + query, json=QUESTION, headers={"host": host}
        )
    assert answer.status_code == 200, answer.text
    (request,) = fresh.requests()
    assert (request["path"], request["raw_path"], request["query"]) == (CHAT, CHAT, "")
    assert dict(request["headers"])["host"] == urlsplit(fresh.url).netloc


# -- headers: what the upstream gets, what the caller gets ------------------------------------


async def test_the_callers_credentials_and_other_headers_never_reach_the_upstream(
    x402_local_stack: LocalStack, gateway: GatewayProcess, fresh: StubUpstream, payer: LocalAccount
) -> None:
    callers = {
        "authorization": "Bearer caller-key",
        "x-api-key": "caller-key",
        "api-key": "caller-key",
        "cookie": "session=caller",
        "openai-organization": "org-caller",
        "openai-project": "proj-caller",
        "x-forwarded-for": "10.0.0.1",
        "x-stub-upstream": "caller",
    }
    async with paying_client(x402_local_stack, payer) as client:
        answer = await client.post(gateway.url + CHAT, json=QUESTION, headers=callers)
    assert answer.status_code == 200, answer.text
    (request,) = fresh.requests()
    received = dict(request["headers"])
    assert received["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert set(received) <= {
        "host",
        "accept",
        "content-type",
        "content-length",
        "accept-encoding",
        "user-agent",
        "authorization",
        "connection",
    }
    assert "caller" not in json.dumps(request["headers"])
    assert "payment-signature" not in received
    assert "x-payment" not in received


async def test_the_upstream_key_reaches_no_caller_byte_and_no_log_line(
    x402_local_stack: LocalStack,
    gateway: GatewayProcess,
    upstream: StubUpstream,
    payer: LocalAccount,
    tmp_path: Any,
) -> None:
    """Every answer of every kind (paid, streamed, refused, failed upstream, receipts,
    models, health, metrics), headers and bodies, then the gateway's whole log."""
    received: list[bytes] = []

    def keep(response: httpx.Response) -> None:
        head = f"{response.status_code}\n" + "\n".join(
            f"{name}: {value}" for name, value in response.headers.multi_items()
        )
        received.append(head.encode() + b"\n\n" + response.content)

    async with paying_client(x402_local_stack, payer) as client, httpx.AsyncClient() as plain:
        for body in (
            QUESTION,
            {**QUESTION, "stream": True},
            {**QUESTION, "model": "stub-fail-500"},
            {**QUESTION, "model": "stub-fail-400"},
            {**QUESTION, "model": "unknown"},
            {**QUESTION, "n": 3},
        ):
            answer = await client.post(gateway.url + CHAT, json=body)
            keep(answer)
            if "x-payment-receipt" in answer.headers:
                keep(await plain.get(gateway.url + answer.headers["x-payment-receipt"]))
        for path in ("/v1/models", "/healthz", "/livez", "/metrics", "/nothing"):
            keep(await plain.get(gateway.url + path))
        keep(await plain.post(gateway.url + CHAT, content=b"not json"))
    with gateway_process(
        x402_local_stack,
        tmp_path,
        openai_config(upstream.url),
        env={"STUB_UPSTREAM_KEY": UPSTREAM_KEY + "-wrong"},
    ) as misconfigured:
        async with paying_client(x402_local_stack, payer) as client:
            refused = await client.post(misconfigured.url + CHAT, json=QUESTION)
            keep(refused)
        wrong_key_log = misconfigured.log_text()
    assert refused.status_code == 502
    assert refused.json()["reason"] == "upstream_auth_failed"
    everything = b"\n".join(received)
    assert UPSTREAM_KEY.encode() not in everything
    assert b"sk-stub-UPSTREAM" not in everything
    assert UPSTREAM_KEY not in gateway.log_text()
    assert "sk-stub-UPSTREAM" not in wrong_key_log
    assert '"event":"access"' in gateway.log_text()  # the log was written, and read


# -- pinned fields and defaults ---------------------------------------------------------------


def test_a_caller_that_overrides_a_pinned_field_is_refused_before_any_payment(
    gateway: GatewayProcess, fresh: StubUpstream
) -> None:
    answer = httpx.post(gateway.url + CHAT, json={**QUESTION, "n": 4})
    assert answer.status_code == 400
    assert answer.json()["reason"] == "pinned_field"
    assert answer.json()["field"] == "n"
    assert fresh.requests() == []


async def test_pinned_fields_are_overridden_and_defaults_set_as_configured(
    x402_local_stack: LocalStack, gateway: GatewayProcess, fresh: StubUpstream, payer: LocalAccount
) -> None:
    async with paying_client(x402_local_stack, payer) as client:
        overridden = await client.post(
            gateway.url + CHAT,
            json={**QUESTION, "model": "pinned-override", "temperature": 1.7},
        )
        defaulted = await client.post(gateway.url + CHAT, json=QUESTION)
        kept = await client.post(gateway.url + CHAT, json={**QUESTION, "temperature": 0.1})
    assert [a.status_code for a in (overridden, defaulted, kept)] == [200, 200, 200]
    bodies = [json.loads(request["body"]) for request in fresh.requests()]
    assert (bodies[0]["temperature"], bodies[0]["metadata"]) == (0, {"tier": "paid"})
    assert (bodies[1]["temperature"], bodies[1]["n"]) == (0.5, 1)
    assert bodies[2]["temperature"] == 0.1


def test_a_model_no_plan_names_is_refused_with_the_models_served(
    gateway: GatewayProcess, fresh: StubUpstream
) -> None:
    answer = httpx.post(gateway.url + CHAT, json={**QUESTION, "model": "gpt-4-expensive"})
    assert answer.status_code == 400
    assert answer.json()["reason"] == "unknown_model"
    assert "local-stub" in answer.json()["models"]
    assert fresh.requests() == []


# -- bounds -----------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_refused_and_never_forwarded(
    gateway: GatewayProcess, fresh: StubUpstream
) -> None:
    huge = {**QUESTION, "messages": [{"role": "user", "content": "x" * 70_000}]}
    answer = httpx.post(gateway.url + CHAT, json=huge)
    assert answer.status_code == 413
    assert answer.json()["reason"] == "request_too_large"
    assert fresh.requests() == []


def test_a_body_that_is_not_a_json_object_is_refused(
    gateway: GatewayProcess, fresh: StubUpstream
) -> None:
    for content in (b"", b"[1, 2]", b"{nope"):
        answer = httpx.post(gateway.url + CHAT, content=content)
        assert (answer.status_code, answer.json()["reason"]) == (400, "invalid_json_body")
    assert fresh.requests() == []


# -- upstream failures are not charged --------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "status", "reason"),
    [
        ("stub-fail-500", 500, None),
        ("stub-fail-400", 400, None),
        ("stub-stall", 504, "upstream_timeout"),
    ],
)
async def test_an_upstream_error_or_timeout_is_reported_and_not_charged(
    x402_local_stack: LocalStack,
    gateway: GatewayProcess,
    payer: LocalAccount,
    model: str,
    status: int,
    reason: str | None,
) -> None:
    stack = x402_local_stack
    before = token_balance(stack.web3(), stack.asset, payer.address)
    async with paying_client(stack, payer) as client:
        answer = await client.post(gateway.url + CHAT, json={**QUESTION, "model": model})
        receipt = (
            await client.get(gateway.url + answer.headers["x-payment-receipt"], params={"wait": 10})
        ).json()
    assert answer.status_code == status, answer.text
    if reason is not None:
        assert answer.json()["reason"] == reason
    assert (receipt["status"], receipt["amount"]) == ("not_charged", "0")
    assert token_balance(stack.web3(), stack.asset, payer.address) == before


async def test_an_unreachable_upstream_is_a_502_and_not_charged(
    x402_local_stack: LocalStack, payer: LocalAccount, tmp_path: Any
) -> None:
    closed = f"http://127.0.0.1:{closed_port()}"
    with gateway_process(x402_local_stack, tmp_path, openai_config(closed)) as gateway:
        async with paying_client(x402_local_stack, payer) as client:
            answer = await client.post(gateway.url + CHAT, json=QUESTION)
            receipt = (
                await client.get(
                    gateway.url + answer.headers["x-payment-receipt"], params={"wait": 10}
                )
            ).json()
    assert (answer.status_code, answer.json()["reason"]) == (502, "upstream_unavailable")
    assert (receipt["status"], receipt["amount"]) == ("not_charged", "0")
