"""Paid through the gateway, end to end: official clients, real processes, the local chain.

The ``openai`` and ``anthropic`` packages pay through x402-meter's paying client, and the
official TypeScript client (``@x402/fetch``) pays from node. Each charge is the upstream's
own usage at the plan's price, exactly: the receipt's tokens are what the stub reported,
its amount is the price of those tokens, and the payer's balance on chain fell by it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Final

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam
from eth_account.signers.local import LocalAccount
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tests.examples.conftest import Example, example_settings, new_funded_payer
from tests.gateway.harness import GatewayProcess, StubUpstream
from tests.interop.test_clients_pay import UPTO_JSON, UPTO_STREAM, check, needs_node, prepare
from tests.interop.test_clients_pay import run_node as run_node_client
from x402_meter import Asset
from x402_meter.client import PayingClient, Receipt, Wallet
from x402_meter.devstack import LocalStack, token_balance
from x402_meter.devstack.stub_model import GREETING, pieces, prompt_tokens

pytestmark = pytest.mark.anyio

HELLO: Final[list[ChatCompletionMessageParam]] = [{"role": "user", "content": "hi"}]
CLAUDE_HELLO: Final[list[MessageParam]] = [{"role": "user", "content": "hi"}]
OPENAI_PRICE: Final = (Decimal("0.000001"), Decimal("0.000002"))  # per_million 1 / 2
ANTHROPIC_PRICE: Final = (Decimal("0.000003"), Decimal("0.000015"))  # per_million 3 / 15


def expected_amount(price: tuple[Decimal, Decimal], input_tokens: int, output: int) -> int:
    """The charge in atomic units (6 decimals), rounded up once."""
    exact = (price[0] * input_tokens + price[1] * output) * 10**6
    return int(exact.to_integral_value(rounding="ROUND_CEILING"))


STUB_INPUT: Final = prompt_tokens(HELLO)
STUB_OUTPUT: Final = len(pieces(GREETING))


@pytest.fixture
def http(x402_local_stack: LocalStack, payer: LocalAccount) -> Iterator[PayingClient]:
    stack = x402_local_stack
    asset = Asset(stack.asset, stack.asset_name, stack.asset_version, stack.asset_decimals)
    with PayingClient(
        wallet=Wallet(payer, network=stack.network, asset=asset, max_total="1")
    ) as client:
        yield client


def balance(stack: LocalStack, address: str) -> int:
    return token_balance(stack.web3(), stack.asset, address)


def assert_charged(
    stack: LocalStack,
    receipt: Receipt,
    price: tuple[Decimal, Decimal],
    input_tokens: int = STUB_INPUT,
    output_tokens: int = STUB_OUTPUT,
) -> int:
    assert receipt.status == "settled", receipt
    assert (receipt.input_tokens, receipt.output_tokens) == (input_tokens, output_tokens)
    assert receipt.usage_source == "reported"
    assert receipt.amount == expected_amount(price, input_tokens, output_tokens)
    return receipt.amount


def test_openai_package_pays_for_chat_and_responses_streamed_or_not(
    x402_local_stack: LocalStack, gateway: GatewayProcess, http: PayingClient, payer: LocalAccount
) -> None:
    stack = x402_local_stack
    before = balance(stack, payer.address), balance(stack, gateway.seller)
    llm = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x402", http_client=http)
    charged = 0

    completion = llm.chat.completions.create(model="local-stub", messages=HELLO)
    assert completion.choices[0].message.content == GREETING
    charged += assert_charged(stack, http.receipt(), OPENAI_PRICE)

    stream = llm.chat.completions.create(model="local-stub", messages=HELLO, stream=True)
    chunks: list[ChatCompletionChunk] = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == GREETING
    assert all(chunk.usage is None for chunk in chunks)  # not asked for, so not shown
    charged += assert_charged(stack, http.receipt(), OPENAI_PRICE)

    response = llm.responses.create(model="local-stub", input="hi")
    assert response.output_text == GREETING
    charged += assert_charged(stack, http.receipt(), OPENAI_PRICE)

    events = list(llm.responses.create(model="local-stub", input="hi", stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == GREETING
    charged += assert_charged(stack, http.receipt(), OPENAI_PRICE)

    after = balance(stack, payer.address), balance(stack, gateway.seller)
    assert before[0] - after[0] == charged
    assert after[1] - before[1] == charged


def test_openai_package_pays_for_embeddings_their_input_only(
    x402_local_stack: LocalStack, gateway: GatewayProcess, http: PayingClient
) -> None:
    llm = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x402", http_client=http)
    inputs = ["x402 turns HTTP 402 into a payment", "per token"]
    embedded = llm.embeddings.create(model="local-stub", input=inputs)
    assert len(embedded.data) == 2
    input_tokens = prompt_tokens([{"content": text} for text in inputs])
    assert_charged(x402_local_stack, http.receipt(), OPENAI_PRICE, input_tokens, 0)


def test_anthropic_package_pays_for_messages_streamed_or_not(
    x402_local_stack: LocalStack, gateway: GatewayProcess, http: PayingClient, payer: LocalAccount
) -> None:
    stack = x402_local_stack
    before = balance(stack, payer.address)
    claude = anthropic.Anthropic(
        base_url=gateway.url + "/anthropic", api_key="x402", http_client=http.httpx2_client()
    )
    message = claude.messages.create(model="claude-stub-1", max_tokens=256, messages=CLAUDE_HELLO)
    assert message.content[0].text == GREETING  # type: ignore[union-attr]
    charged = assert_charged(stack, http.receipt(), ANTHROPIC_PRICE)

    with claude.messages.stream(
        model="claude-stub-1", max_tokens=256, messages=CLAUDE_HELLO
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == GREETING
    charged += assert_charged(stack, http.receipt(), ANTHROPIC_PRICE)
    assert before - balance(stack, payer.address) == charged


def test_ollamas_native_chat_is_paid_with_its_own_counts_and_the_price_per_request(
    x402_local_stack: LocalStack,
    gateway: GatewayProcess,
    upstream: StubUpstream,
    http: PayingClient,
) -> None:
    """No model named: the upstream's default; the output limit pinned; NDJSON streamed."""
    answer = http.post(
        gateway.url + "/ollama/api/chat",
        json={"messages": HELLO, "options": {"num_predict": 100000}},
    )
    assert answer.status_code == 200, answer.text
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == GREETING
    assert lines[-1]["done"] is True
    receipt = http.receipt()
    per_request = 100  # 0.0001 USDC
    assert receipt.status == "settled"
    assert (receipt.input_tokens, receipt.output_tokens) == (STUB_INPUT, STUB_OUTPUT)
    assert receipt.amount == per_request + expected_amount(OPENAI_PRICE, STUB_INPUT, STUB_OUTPUT)
    sent = json.loads(upstream.requests()[-1]["body"])
    assert (sent["model"], sent["options"]["num_predict"]) == ("llama-stub", 256)


def test_a_stream_past_what_was_paid_is_ended_there_and_charged_the_maximum(
    x402_local_stack: LocalStack, gateway: GatewayProcess, http: PayingClient
) -> None:
    logged = gateway.process.expect_line(
        lambda line: line.startswith('{"event":"access"') and '"status":200' in line
    )
    body = {"model": "capped-stub", "messages": HELLO, "stream": True}
    with http.stream("POST", gateway.url + "/v1/chat/completions", json=body) as answer:
        streamed = answer.read()
    receipt = http.receipt()
    assert b"data: [DONE]" not in streamed  # ended before the upstream's end
    assert receipt.status == "settled"
    assert receipt.amount == receipt.max_amount
    assert logged.wait(30)
    assert "Exception in ASGI application" not in gateway.log_text()


def test_a_flat_plan_charges_its_price_per_request(
    x402_local_stack: LocalStack, gateway: GatewayProcess, http: PayingClient
) -> None:
    llm = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x402", http_client=http)
    llm.chat.completions.create(model="flat-stub", messages=HELLO)
    receipt = http.receipt()
    assert (receipt.status, receipt.amount) == ("settled", 2000)


def test_a_flat_plan_is_paid_up_front_with_exact_and_settled_before_the_answer(
    x402_local_stack: LocalStack, gateway: GatewayProcess, payer: LocalAccount
) -> None:
    stack = x402_local_stack
    asset = Asset(stack.asset, stack.asset_name, stack.asset_version, stack.asset_decimals)
    wallet = Wallet(payer, network=stack.network, asset=asset, schemes=("exact",))
    before = balance(stack, payer.address)
    with PayingClient(wallet=wallet) as http:
        answer = http.post(
            gateway.url + "/v1/chat/completions", json={"model": "flat-stub", "messages": HELLO}
        )
        receipt = http.receipt()
    assert answer.status_code == 200, answer.text
    assert "payment-response" in answer.headers  # settled before it was sent
    assert (receipt.status, receipt.scheme, receipt.amount) == ("settled", "exact", 2000)
    assert before - balance(stack, payer.address) == 2000


def test_an_answer_without_usage_is_charged_by_the_tokenizer(
    x402_local_stack: LocalStack, gateway: GatewayProcess, http: PayingClient
) -> None:
    llm = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x402", http_client=http)
    llm.chat.completions.create(model="stub-no-usage", messages=HELLO)
    receipt = http.receipt()
    assert receipt.status == "settled"
    assert receipt.usage_source == "estimated"
    input_tokens, output_tokens = receipt.input_tokens or 0, receipt.output_tokens or 0
    assert output_tokens > 0
    assert receipt.amount == expected_amount(OPENAI_PRICE, input_tokens, output_tokens)


def test_the_models_endpoint_lists_the_plans_with_their_prices(gateway: GatewayProcess) -> None:
    listing = httpx.get(gateway.url + "/v1/models").json()
    models = {entry["id"]: entry for entry in listing["data"]}
    assert set(models) == {
        "local-stub",
        "stub-*",
        "pinned-override",
        "flat-stub",
        "claude-stub*",
        "llama-stub",
        "capped-stub",
    }
    assert models["local-stub"]["pricing"]["input_per_million"] == "1"
    assert models["local-stub"]["pricing"]["max_tokens"] == 512
    assert models["flat-stub"]["pricing"]["per_request"] == "0.002"
    assert models["claude-stub*"]["paths"] == ["/anthropic/v1/messages"]


@needs_node
async def test_the_official_typescript_client_pays_through_the_gateway(
    x402_local_stack: LocalStack, gateway: GatewayProcess
) -> None:
    stack = x402_local_stack
    served = Example(
        "gateway", gateway.url, stack, example_settings(stack), new_funded_payer(stack)
    )
    cells = (UPTO_JSON, UPTO_STREAM)
    paid = prepare(served, cells)
    assert await run_node_client("official.mjs", served, paid) == []
    for entry in paid:
        await check(served, entry)  # 200, the whole answer, settled, spent = receipt
        path = (entry.headers or {})["x-payment-receipt"]
        async with httpx.AsyncClient() as client:
            receipt = (await client.get(gateway.url + path)).json()
        assert receipt["usage_source"] == "reported", receipt
        assert receipt["input_tokens"] == prompt_tokens(entry.cell.body["messages"])
        assert int(receipt["amount"]) == expected_amount(
            OPENAI_PRICE, receipt["input_tokens"], receipt["output_tokens"]
        )
