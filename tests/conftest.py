from collections.abc import Iterator

import pytest

from x402_meter.devstack.redis_server import redis_server


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for the session (Debian's redis-server), stopped by PID."""
    with redis_server(tmp_path_factory.mktemp("redis") / "redis.log") as url:
        yield url
