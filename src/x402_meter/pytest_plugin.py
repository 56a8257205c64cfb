"""pytest plugin (auto-loaded when x402-meter is installed): the local x402 stack as a fixture.

Test your own metered app against a real chain and facilitator::

    def test_paid_call(x402_local_stack):
        app = make_app(facilitator_url=x402_local_stack.facilitator_url, ...)

The stack starts once per test session, on first use, and every process it started is
stopped when the session ends, also when tests fail or the run is interrupted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from x402_meter.devstack import LocalStack


@pytest.fixture(scope="session")
def x402_local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A running local x402 stack (chain, token, Permit2, upto proxy, batch-settlement
    contracts, facilitator)."""
    from x402_meter.devstack import local_stack

    log_dir: Path = tmp_path_factory.mktemp("x402-local-stack")
    with local_stack(log_dir=log_dir) as stack:
        yield stack
