import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from x402_meter.devstack.redis_server import redis_server

# Hypothesis profiles. "ci": the same examples on every run (derandomized, no example
# database), so that a red build is reproducible from its log and a green one is not luck;
# no deadline (2 shared cores make timings noise). "dev": Hypothesis' defaults, random.
# Chosen by HYPOTHESIS_PROFILE, else "ci" when CI is set true (.ci/run sets CI=1, most CI
# services CI=true).
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev")
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE")
    or ("ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev")
)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for the session (Debian's redis-server), stopped by PID."""
    with redis_server(tmp_path_factory.mktemp("redis") / "redis.log") as url:
        yield url
