"""Stores named by URL: ``memory://``, ``sqlite:///relative.db``, ``sqlite:////abs/path.db``,
``redis://host:port/db`` (also ``rediss://``); and the channel stores of sessions."""

from __future__ import annotations

from x402_meter.errors import ConfigurationError
from x402_meter.store.base import PaymentStore
from x402_meter.store.channel_base import ChannelStore
from x402_meter.store.channel_memory import MemoryChannelStore
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


def open_channel_store(url: str) -> ChannelStore:
    """The channel store a URL names: ``memory://`` or ``sqlite:///path`` (Redis comes later)."""
    scheme, sep, rest = url.partition("://")
    if scheme == "memory" and sep:
        return MemoryChannelStore()
    if scheme == "sqlite" and sep and rest.removeprefix("/"):
        from x402_meter.store.channel_sqlite import SQLiteChannelStore

        return SQLiteChannelStore(rest.removeprefix("/"))
    raise ConfigurationError(
        "a channel store URL is memory:// or sqlite:///path (Redis is not supported yet),"
        f" got {url!r}"
    )


def channel_store_beside(store: PaymentStore) -> ChannelStore:
    """The channel store that goes with a payment store: in memory beside memory, the same
    file beside SQLite. Another store needs a channel store of its own (none yet for Redis)."""
    from x402_meter.store.sqlite import SQLiteStore

    if isinstance(store, MemoryStore):
        return MemoryChannelStore()
    if isinstance(store, SQLiteStore):
        from x402_meter.store.channel_sqlite import SQLiteChannelStore

        return SQLiteChannelStore(store.path)
    raise ConfigurationError(
        "sessions keep their channels beside a memory or SQLite store, not a"
        f" {type(store).__name__}: give channel_store= (memory:// or sqlite:///path)"
    )
