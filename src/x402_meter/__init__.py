"""x402-meter: charge per token for anything served over HTTP, with x402."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("x402-meter")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
