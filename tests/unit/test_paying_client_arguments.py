"""Both paying clients read their arguments the same way (no network, no signing)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from x402_meter.assets import Asset
from x402_meter.client import PayingAsyncClient, PayingClient, Payment, PaymentStage, Wallet
from x402_meter.errors import ConfigurationError

KEY = "0x" + "11" * 32
NETWORK = "eip155:8453"
Client = type[PayingAsyncClient] | type[PayingClient]
CLIENTS = [PayingAsyncClient, PayingClient]


def listener(stage: PaymentStage, payment: Payment) -> None:
    pass


@pytest.mark.parametrize("client_class", CLIENTS)
def test_the_wallet_options_reach_the_wallet(client_class: Client) -> None:
    asset = Asset("0x" + "22" * 20, "Token", "1", 6)
    client = client_class(
        KEY,
        network=NETWORK,
        asset=asset,
        max_per_request="0.05",
        max_total=Decimal("5"),
        on_payment=listener,
        rpc_url="http://127.0.0.1:8545",
    )
    wallet = client.wallet
    assert (wallet.network, wallet.asset) == (NETWORK, asset)
    assert (wallet.max_per_request, wallet.max_total) == (50_000, 5_000_000)
    assert wallet.on_payment is listener
    assert wallet.prover is not None
    assert (wallet.prover.rpc_url, wallet.prover.chain_id) == ("http://127.0.0.1:8545", 8453)
    assert client.timeout.read == 60.0


@pytest.mark.parametrize("client_class", CLIENTS)
def test_the_defaults_are_the_networks_usdc_and_a_one_unit_cap(client_class: Client) -> None:
    wallet = client_class(KEY, network=NETWORK, timeout=5.0).wallet
    assert wallet.asset.decimals == 6
    assert (wallet.max_per_request, wallet.max_total, wallet.on_payment) == (1_000_000, None, None)
    assert wallet.prover is None  # no rpc_url: every payment counts at its maximum


@pytest.mark.parametrize("client_class", CLIENTS)
def test_a_given_wallet_is_used_as_it_is(client_class: Client) -> None:
    wallet = Wallet(KEY, network=NETWORK)
    assert client_class(wallet=wallet).wallet is wallet


@pytest.mark.parametrize("client_class", CLIENTS)
def test_a_key_and_a_wallet_together_are_refused(client_class: Client) -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        client_class(KEY, wallet=Wallet(KEY, network=NETWORK))


@pytest.mark.parametrize("client_class", CLIENTS)
@pytest.mark.parametrize("key", [None, KEY])
def test_without_a_key_and_a_network_or_a_wallet_nothing_is_built(
    client_class: Client, key: str | None
) -> None:
    with pytest.raises(ConfigurationError, match="pass private_key and network"):
        client_class(key, network=None if key else NETWORK)


@pytest.mark.parametrize("client_class", CLIENTS)
def test_an_rpc_url_with_a_wallet_is_refused(client_class: Client) -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        client_class(wallet=Wallet(KEY, network=NETWORK), rpc_url="http://127.0.0.1:8545")


@pytest.mark.parametrize("rpc_url", ["", "127.0.0.1:8545", "ws://127.0.0.1:8545"])
def test_an_rpc_url_must_be_http(rpc_url: str) -> None:
    with pytest.raises(ConfigurationError, match="rpc_url"):
        Wallet(KEY, network=NETWORK, rpc_url=rpc_url)
