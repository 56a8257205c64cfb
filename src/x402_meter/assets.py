"""The token a price is paid in."""

from __future__ import annotations

from dataclasses import dataclass

from x402.mechanisms.evm.default_assets import get_default_asset

from x402_meter.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Asset:
    """An ERC-20 token and its EIP-712 domain (``name``, ``version``) as signatures need it.

    ``eip2612``: the token has EIP-2612 ``permit`` (USDC does), so wallets that never approved
    Permit2 can still pay an ``upto`` requirement, gas-free, if the facilitator sponsors it.
    ``eip3009``: the token has EIP-3009 ``transferWithAuthorization`` (USDC does): ``exact``
    requirements then say so in ``extra.primaryType``, which thirdweb's client needs.
    """

    address: str
    name: str
    version: str
    decimals: int = 6
    eip2612: bool = True
    eip3009: bool = True

    def __post_init__(self) -> None:
        if not (self.address.startswith("0x") and len(self.address) == 42):
            raise ConfigurationError(
                f"asset address must be 0x + 40 hex digits, got {self.address!r}"
            )
        if not 0 <= self.decimals <= 36:
            raise ConfigurationError(f"asset decimals must be 0..36, got {self.decimals}")


def default_asset(network: str) -> Asset:
    """The network's USDC, as the x402 SDK knows it (Base, Base Sepolia, Ethereum, ...)."""
    try:
        info = get_default_asset(network)
    except (ValueError, KeyError) as exc:
        raise ConfigurationError(
            f"no default asset is known for network {network!r}: pass asset=Asset(...)"
        ) from exc
    return Asset(info["asset"], info["name"], info["version"], info["decimals"])
