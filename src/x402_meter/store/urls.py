"""Stores named by URL: ``memory://``, ``sqlite:///relative.db``, ``sqlite:////abs/path.db``,
``redis://host:port/db`` (also ``rediss://``)."""

from __future__ import annotations

from x402_meter.errors import ConfigurationError
from x402_meter.store.base import PaymentStore
from x402_meter.store.memory import MemoryStore


def open_store(url: str) -> PaymentStore:
    """The store a URL names. Redis needs the ``redis`` extra."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError(f"a store URL looks like sqlite:///x402.db, got {url!r}")
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        from x402_meter.store.sqlite import SQLiteStore

        path = rest.removeprefix("/")  # sqlite:///rel.db -> rel.db ; sqlite:////abs.db -> /abs.db
        if not path:
            raise ConfigurationError(f"sqlite store URL needs a path: {url!r}")
        return SQLiteStore(path)
    if scheme in ("redis", "rediss", "unix"):
        from x402_meter.store.redis import RedisStore

        return RedisStore(url)
    raise ConfigurationError(f"unknown store {scheme!r}: use memory://, sqlite:/// or redis://")
