"""One stub upstream and one gateway in front of it, shared by a test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from eth_account.signers.local import LocalAccount

from tests.examples.conftest import new_funded_payer
from tests.gateway.harness import (
    GatewayProcess,
    StubUpstream,
    gateway_process,
    openai_config,
    stub_upstream,
)
from x402_meter.devstack import LocalStack


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubUpstream]:
    with stub_upstream(tmp_path_factory.mktemp("upstream")) as stub:
        yield stub


@pytest.fixture(scope="module")
def gateway(
    x402_local_stack: LocalStack,
    upstream: StubUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("gateway")
    config = openai_config(upstream.url, read_timeout="3")
    with gateway_process(x402_local_stack, directory, config) as served:
        yield served


@pytest.fixture
def payer(x402_local_stack: LocalStack) -> LocalAccount:
    """A new account with gas, 100 test USDC and a Permit2 approval."""
    return new_funded_payer(x402_local_stack)
