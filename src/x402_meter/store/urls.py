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
    """The channel store a URL names: ``memory://``, ``sqlite:///path`` or
    ``redis://host:port/db`` (the ``redis`` extra)."""
    scheme, sep, rest = url.partition("://")
    if scheme == "memory" and sep:
        return MemoryChannelStore()
    if scheme == "sqlite" and sep and rest.removeprefix("/"):
        from x402_meter.store.channel_sqlite import SQLiteChannelStore

        return SQLiteChannelStore(rest.removeprefix("/"))
    if scheme in ("redis", "rediss", "unix") and sep and rest:
        from x402_meter.store.channel_redis import RedisChannelStore

        return RedisChannelStore(url)
    raise ConfigurationError(
        f"a channel store URL is memory://, sqlite:///path or redis://host:port/db, got {url!r}"
    )


def channel_store_beside(store: PaymentStore) -> ChannelStore:
    """The channel store that goes with a payment store: in memory beside memory, the same
    file beside SQLite, the same server and key prefix beside Redis. Another store needs a
    channel store of its own."""
    from x402_meter.store.sqlite import SQLiteStore

    if isinstance(store, MemoryStore):
        return MemoryChannelStore()
    if isinstance(store, SQLiteStore):
        from x402_meter.store.channel_sqlite import SQLiteChannelStore

        return SQLiteChannelStore(store.path)
    beside_redis = _redis_channels_beside(store)
    if beside_redis is not None:
        return beside_redis
    raise ConfigurationError(
        "sessions keep their channels beside a memory, SQLite or Redis store, not a"
        f" {type(store).__name__}: give channel_store= (memory://, sqlite:///path or"
        " redis://host:port/db)"
    )


def _redis_channels_beside(store: PaymentStore) -> ChannelStore | None:
    """Channels on ``store``'s Redis server under its prefix, if it is a ``RedisStore``."""
    try:
        from x402_meter.store.redis import RedisStore
    except ImportError:  # no redis extra: the store cannot be a RedisStore
        return None
    if not isinstance(store, RedisStore):
        return None
    from x402_meter.store.channel_redis import RedisChannelStore

    return RedisChannelStore(store.url, prefix=store.prefix)
