"""A private dev chain with the batch-settlement contracts, put back after every test.

Not the session's shared local stack: these tests move the chain's clock forward (withdraw
delays), which would expire the authorizations other tests sign against wall-clock time.
Each test runs between an ``evm_snapshot`` and an ``evm_revert``, which restores balances,
channels and the clock, so the tests do not see each other's channels.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from web3 import Web3

from x402_meter.devstack.accounts import PAYERS
from x402_meter.devstack.anvil import start_anvil
from x402_meter.devstack.batch_settlement import BatchSettlementContracts
from x402_meter.devstack.deploy import deploy_token, fund_payers, place_canonical_contracts
from x402_meter.devstack.stack import PAYER_FUNDING


@pytest.fixture(scope="session")
def batch_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchSettlementContracts]:
    log_path = tmp_path_factory.mktemp("batch-settlement-chain") / "anvil.log"
    anvil = start_anvil(log_path=log_path)
    try:
        w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
        place_canonical_contracts(w3)
        token = deploy_token(w3)
        fund_payers(w3, token, PAYERS, amount=PAYER_FUNDING)
        yield BatchSettlementContracts(w3, token.address, token.name, token.version)
    finally:
        anvil.stop()


@pytest.fixture
def contracts(batch_chain: BatchSettlementContracts) -> Iterator[BatchSettlementContracts]:
    """The private chain; whatever the test does to it is undone afterwards."""
    snapshot = batch_chain.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    yield batch_chain
    batch_chain.w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]
