"""The gateway's app in process: CORS, its own endpoints, and what a refused request costs.

The real-process tests (``tests/gateway/``) prove the flows; these check the app's answers
in milliseconds: the upstream is the stub providers' app through ``httpx.ASGITransport``,
the facilitator the in-process one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from tests.inprocess.facilitator import NETWORK, InProcessFacilitator
from tests.inprocess.harness import ASSET, PAYER, header, offered, signed
from x402_meter import MemoryStore
from x402_meter.client import PayingAsyncClient, Wallet
from x402_meter.cors import EXPOSE_HEADERS
from x402_meter.devstack.accounts import SELLER
from x402_meter.devstack.stub_model import GREETING
from x402_meter.devstack.stub_upstream import create_stub_upstream
from x402_meter.gateway import Gateway, parse_config

pytestmark = pytest.mark.anyio

ORIGIN: Final = "https://chat.example"
CHAT: Final = "/v1/chat/completions"
QUESTION: Final = {"model": "local-stub", "messages": [{"role": "user", "content": "hi"}]}


def gateway(seen: list[dict[str, Any]] | None = None, **settings: Any) -> Gateway:
    config = parse_config(
        {
            "gateway": {
                "pay_to": SELLER.address,
                "network": NETWORK,
                "store": "memory://",
                "asset": {"address": ASSET.address, "name": ASSET.name, "version": "2"},
                **settings,
            },
            "upstreams": {
                "openai": {
                    "kind": "openai",
                    "base_url": "http://upstream.test",
                    "plans": [{"models": ["local-stub", "stub-*"], "price_per_token": "0.000001"}],
                },
                "anthropic": {
                    "kind": "anthropic",
                    "base_url": "http://upstream.test",
                    "prefix": "/anthropic",
                    "plans": [{"models": ["claude-stub"], "price_per_token": "0.000001"}],
                },
            },
        },
        {},
        base_dir=Path(),
    )
    upstream = create_stub_upstream(on_request=None if seen is None else seen.append)
    return Gateway(
        config,
        store=MemoryStore(),
        facilitator=InProcessFacilitator().client(),
        upstream_transport=httpx.ASGITransport(app=upstream),
    )


def client(app: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


async def test_a_configured_origin_may_preflight_pay_and_read_the_payment_headers() -> None:
    app = gateway(cors_origins=[ORIGIN])
    async with client(app) as caller:
        preflight = await caller.options(
            CHAT,
            headers={
                "origin": ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": "payment-signature, content-type",
            },
        )
        challenge = await caller.post(CHAT, json=QUESTION, headers={"origin": ORIGIN})
    assert preflight.status_code == 200
    assert "payment-signature" in preflight.headers["access-control-allow-headers"].lower()
    assert challenge.status_code == 402
    assert challenge.headers["access-control-allow-origin"] == ORIGIN
    exposed = challenge.headers["access-control-expose-headers"].lower()
    assert all(name.lower() in exposed for name in EXPOSE_HEADERS)


async def test_another_origin_gets_no_cors_headers() -> None:
    async with client(gateway(cors_origins=[ORIGIN])) as caller:
        challenge = await caller.post(CHAT, json=QUESTION, headers={"origin": "https://evil"})
    assert "access-control-allow-origin" not in challenge.headers


async def test_without_cors_origins_no_cors_headers_are_sent() -> None:
    async with client(gateway()) as caller:
        challenge = await caller.post(CHAT, json=QUESTION, headers={"origin": ORIGIN})
    assert "access-control-allow-origin" not in challenge.headers


async def test_metrics_can_be_turned_off() -> None:
    async with client(gateway(metrics=False)) as caller:
        assert (await caller.get("/metrics")).status_code == 404
        assert (await caller.get("/livez")).json() == {"status": "live"}


async def test_a_paid_answer_passes_back_only_allowlisted_upstream_headers() -> None:
    seen: list[dict[str, Any]] = []
    app = gateway(seen)
    async with client(app) as caller:
        challenge = await caller.post(CHAT, json=QUESTION)
        answer = await caller.post(
            CHAT, json=QUESTION, headers=header(await signed(offered(challenge)))
        )
    await app.meter.runtime.settler.aclose()
    assert answer.status_code == 200
    assert set(answer.headers) <= {
        "content-type",
        "content-length",
        "x-payment-receipt",
        "cache-control",
    }
    (request,) = seen
    assert request["path"] == CHAT


async def test_the_async_anthropic_client_pays_through_the_httpx2_bridge() -> None:
    import anthropic

    app = gateway()
    wallet = Wallet(PAYER.private_key, network=NETWORK, asset=ASSET)
    async with PayingAsyncClient(
        wallet=wallet, transport=httpx.ASGITransport(app=app), base_url="http://gw"
    ) as http:
        claude = anthropic.AsyncAnthropic(
            base_url="http://gw/anthropic", api_key="x402", http_client=http.httpx2_client()
        )
        message = await claude.messages.create(
            model="claude-stub", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
        receipt = await http.receipt()
    await app.meter.runtime.settler.aclose()
    assert message.content[0].text == GREETING  # type: ignore[union-attr]
    assert (receipt.status, receipt.usage_source) == ("settled", "reported")


async def test_an_upstream_redirect_is_not_followed_relayed_or_charged() -> None:
    seen: list[dict[str, Any]] = []
    app = gateway(seen)
    body = {**QUESTION, "model": "stub-redirect"}
    async with client(app) as caller:
        challenge = await caller.post(CHAT, json=body)
        answer = await caller.post(
            CHAT, json=body, headers=header(await signed(offered(challenge)))
        )
        await app.meter.runtime.settler.aclose()
        receipt = (await caller.get(answer.headers["x-payment-receipt"])).json()
    assert (answer.status_code, answer.json()["reason"]) == (502, "upstream_redirected")
    assert "location" not in answer.headers
    assert (receipt["status"], receipt["amount"]) == ("not_charged", "0")
    assert [request["path"] for request in seen] == [CHAT]
