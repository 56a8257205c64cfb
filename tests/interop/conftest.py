"""The interop suite's chain: a local stack whose chain id has an x402 v1 name.

x402 v1 knows networks by name only (``base-sepolia``, never ``eip155:31337``), so v1
clients such as ``x402-fetch`` can pay only on a chain that has one. This stack runs anvil
with Base Sepolia's chain id, 84532: every other part (contracts, facilitator, token) is
the usual local one, and nothing leaves the machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import pytest

from x402_meter.devstack import LocalStack, local_stack

V1_NAMED_CHAIN_ID: Final = 84532  # base-sepolia


@pytest.fixture(scope="session")
def interop_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with local_stack(
        chain_id=V1_NAMED_CHAIN_ID, log_dir=tmp_path_factory.mktemp("interop-stack")
    ) as stack:
        yield stack
