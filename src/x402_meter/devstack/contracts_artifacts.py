"""Compiled contract artifacts shipped with the package (built by ``contract_build``)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any, TypedDict


class Artifact(TypedDict):
    contract: str
    compiler: str
    source_sha256: str
    abi: list[dict[str, Any]]
    bytecode: str
    bytecode_runtime: str


@cache
def load_artifact(name: str) -> Artifact:
    """The committed artifact ``contracts/<name>.json``."""
    text = resources.files("x402_meter.devstack.contracts").joinpath(f"{name}.json").read_text()
    artifact: Artifact = json.loads(text)
    return artifact
