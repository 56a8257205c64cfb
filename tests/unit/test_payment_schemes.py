"""The payment-scheme seam: what differs between ``upto`` and ``exact`` is the scheme's.

The pipeline (``x402_meter.pipeline``) names no scheme; each scheme's charge never exceeds
what was authorized, and only ``upto`` answers a missing Permit2 approval with 412.
"""

from __future__ import annotations

import pathlib
import re

from hypothesis import given
from hypothesis import strategies as st

import x402_meter.pipeline
from x402_meter.metering import Meter, Usage
from x402_meter.pricing import Tariff, TokenPrice
from x402_meter.schemes import BUILT_IN, ExactScheme, UptoScheme, scheme_named
from x402_meter.schemes.upto import PERMIT2_ALLOWANCE_REQUIRED

TARIFF = Tariff(TokenPrice.flat("0.000002"), 6, 4096)
counts = st.integers(min_value=0, max_value=10**9)


def test_the_pipeline_names_no_scheme() -> None:
    package = pathlib.Path(x402_meter.pipeline.__file__).parent
    for source in package.glob("*.py"):
        text = source.read_text()
        assert not re.search(r"""["'](upto|exact|batch-settlement)["']""", text), source.name


def test_every_configurable_scheme_is_implemented() -> None:
    from x402_meter.config import MeterConfig
    from x402_meter.protocol.offer import SCHEMES
    from x402_meter.runtime import MeterRuntime

    config = MeterConfig(
        pay_to="0x" + "33" * 20,
        price_per_token="1",
        schemes=("upto", "exact", "batch-settlement"),
        store="memory://",
    )
    schemes = MeterRuntime(config).schemes
    assert set(schemes) == set(SCHEMES)
    assert all(schemes[name].name == name for name in SCHEMES)
    assert set(BUILT_IN) <= set(SCHEMES)
    assert all(scheme_named(name).name == name for name in BUILT_IN)


@given(counts, counts, counts, st.integers(min_value=0, max_value=10**12))
def test_upto_charges_the_count_capped_at_the_authorized_maximum(
    input_tokens: int, output_tokens: int, cached: int, maximum: int
) -> None:
    usage = Usage(input_tokens, output_tokens, cached_input_tokens=cached)
    metered = TARIFF.charge(input_tokens, output_tokens, cached)
    assert UptoScheme().charge(TARIFF, usage, maximum) == min(metered, maximum)


@given(counts, counts, st.integers(min_value=0, max_value=10**12))
def test_exact_charges_the_flat_maximum_whatever_was_counted(
    input_tokens: int, output_tokens: int, maximum: int
) -> None:
    assert ExactScheme().charge(TARIFF, Usage(input_tokens, output_tokens), maximum) == maximum


def test_only_upto_answers_a_missing_permit2_approval_with_412() -> None:
    assert UptoScheme().refusal_status(PERMIT2_ALLOWANCE_REQUIRED) == 412
    assert UptoScheme().refusal_status("invalid_signature") == 402
    assert ExactScheme().refusal_status(PERMIT2_ALLOWANCE_REQUIRED) == 402


def test_exact_settles_before_responding_by_default_and_upto_meters() -> None:
    assert (ExactScheme.settles_before_response, ExactScheme.metered) == (True, False)
    assert (UptoScheme.settles_before_response, UptoScheme.metered) == (False, True)


def test_a_meter_that_subclasses_meter_has_no_snapshot_by_default() -> None:
    class Counting(Meter):
        def feed(self, chunk: bytes) -> None:
            pass

        def finish(self) -> Usage:
            return Usage(0, 0)

    assert Counting().snapshot() is None
