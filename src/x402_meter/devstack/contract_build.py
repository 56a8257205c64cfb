"""Compile the dev stack's Vyper contracts into the committed JSON artifacts.

The artifacts (``contracts/<Name>.json``) are committed so that running the dev stack
needs neither a compiler nor network access; this module regenerates them::

    python -m x402_meter.devstack.contract_build          # rewrite changed artifacts
    python -m x402_meter.devstack.contract_build --check  # exit 1 if any is stale (CI)

Vyper is a development-only dependency, so it is imported lazily and only here.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from x402_meter.errors import VyperNotInstalledError as VyperNotInstalledError

CONTRACTS_DIR = Path(__file__).resolve().parent / "contracts"

CONTRACT_NAMES: tuple[str, ...] = (
    "Token",
    "Permit2",
    "UptoProxy",
    "Multicall3",
    "BatchSettlement",
    "ERC3009DepositCollector",
    "Permit2DepositCollector",
)

# Pinned explicitly instead of relying on the compiler's defaults, which change between
# releases and would make the artifacts depend on the installed vyper. Cancun is the
# oldest fork with transient storage, which the reentrancy locks of UptoProxy and
# BatchSettlement need (they have no initialised storage: their code is installed with
# anvil_setCode). Older than the
# compiler default, it also runs on anvil started with `--hardfork cancun`.
EVM_VERSION = "cancun"
OPTIMIZE = "gas"

_OUTPUT_FORMATS = ["abi", "bytecode", "bytecode_runtime"]


def _import_vyper() -> tuple[ModuleType, ModuleType]:
    """The ``vyper`` package and its ``vyper.compiler.settings`` module."""
    try:
        # importlib rather than a static import: vyper ships no type information, and
        # it must not become a runtime dependency of the package.
        vyper = importlib.import_module("vyper")
        settings = importlib.import_module("vyper.compiler.settings")
    except ImportError as exc:
        raise VyperNotInstalledError(
            "Building the dev stack contracts needs the vyper compiler, a development "
            "dependency: pip install -e '.[dev]'"
        ) from exc
    return vyper, settings


def _check_name(name: str) -> None:
    if name not in CONTRACT_NAMES:
        raise ValueError(f"unknown contract {name!r}; expected one of {', '.join(CONTRACT_NAMES)}")


def source_path(name: str) -> Path:
    """The Vyper source of contract ``name``."""
    _check_name(name)
    return CONTRACTS_DIR / f"{name}.vy"


def artifact_path(name: str) -> Path:
    """The committed JSON artifact of contract ``name``."""
    _check_name(name)
    return CONTRACTS_DIR / f"{name}.json"


def compile_contract(name: str) -> dict[str, Any]:
    """Compile contract ``name`` and return its artifact.

    Keys, in this order: ``contract``, ``compiler``, ``source_sha256``, ``abi``,
    ``bytecode`` (deployment code, 0x-prefixed) and ``bytecode_runtime`` (the code
    to install with ``anvil_setCode``).
    """
    vyper, settings_module = _import_vyper()
    source_bytes = source_path(name).read_bytes()
    settings = settings_module.Settings(
        evm_version=EVM_VERSION,
        optimize=settings_module.OptimizationLevel.from_string(OPTIMIZE),
    )
    # A relative contract path keeps absolute checkout paths out of error messages
    # (and out of anything the compiler might embed).
    output: dict[str, Any] = vyper.compile_code(
        source_bytes.decode("utf-8"),
        contract_path=f"{name}.vy",
        settings=settings,
        output_formats=_OUTPUT_FORMATS,
    )
    return {
        "contract": name,
        "compiler": f"vyper {vyper.__version__}",
        "source_sha256": hashlib.sha256(source_bytes).hexdigest(),
        "abi": output["abi"],
        "bytecode": output["bytecode"],
        "bytecode_runtime": output["bytecode_runtime"],
    }


def render_artifact(artifact: dict[str, Any]) -> str:
    """The exact text committed for ``artifact``: key order kept, indent 2, final newline."""
    return json.dumps(artifact, indent=2) + "\n"


def build(write: bool = True) -> list[str]:
    """Compile every contract and write the artifacts that differ (only if ``write``).

    Returns the names whose artifact changed (or would change, without ``write``).
    """
    changed: list[str] = []
    for name in CONTRACT_NAMES:
        text = render_artifact(compile_contract(name))
        path = artifact_path(name)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        changed.append(name)
        if write:
            path.write_text(text, encoding="utf-8")
    return changed


def stale_artifacts() -> list[str]:
    """Names whose committed artifact differs from a fresh compile (a missing one counts)."""
    return build(write=False)


def _run(check: bool) -> int:
    if check:
        stale = stale_artifacts()
        if stale:
            print(
                f"stale contract artifacts: {', '.join(stale)} "
                "(run: python -m x402_meter.devstack.contract_build)",
                file=sys.stderr,
            )
            return 1
        print("contract artifacts are up to date")
        return 0

    changed = build(write=True)
    if changed:
        print(f"wrote {', '.join(artifact_path(name).name for name in changed)}")
    else:
        print("contract artifacts are up to date")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m x402_meter.devstack.contract_build",
        description="Compile the dev stack's Vyper contracts into contracts/<Name>.json.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only compare: exit 1 if a committed artifact is stale",
    )
    args = parser.parse_args(argv)

    try:
        return _run(check=args.check)
    except VyperNotInstalledError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
