"""The committed contract artifacts are what the committed sources compile to."""

from x402_meter.devstack.contract_build import CONTRACT_NAMES, stale_artifacts
from x402_meter.devstack.contracts_artifacts import load_artifact


def test_committed_artifacts_match_a_fresh_compile() -> None:
    assert stale_artifacts() == [], "run `make contracts` and commit the artifacts"


def test_every_contract_has_abi_and_both_bytecodes() -> None:
    for name in CONTRACT_NAMES:
        artifact = load_artifact(name)
        assert artifact["abi"]
        assert artifact["bytecode"].startswith("0x")
        assert artifact["bytecode_runtime"].startswith("0x")
