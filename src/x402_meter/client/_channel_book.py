"""The payer's durable book of session channels (``session_store``): which channels it holds
with which server, so that a new process resumes them (its next voucher on the old channel,
no new deposit) and ``close_sessions()`` takes back what an earlier process left.

A directory: per channel ``<channel id>.json`` (its config with the salt, its network, the
last resource paid through it, the SDK's state: deposited balance, charged cumulative, last
signed voucher; never a key), written atomically (a temp file renamed over it) with mode
0600 in a 0700 directory, and ``<channel id>.lock``.

Concurrency: a process *claims* a channel with an exclusive ``flock`` on its lock file and
keeps it for as long as its wallet lives; another process sharing the directory skips a
claimed channel and opens one of its own. Chosen over one lock for the whole book: two
processes with one key can pay at once (each on its own channels), and a process that dies,
even by ``kill -9``, lets go of its claims with its file descriptors: no stale claim to
detect, no pid to trust. Local file systems only (``flock`` over NFS is not reliable).

A record is a belief, not a fact: it is used only if its channel id is the hash of its
config and the config is this payer's; the wallet checks it against the chain when it has an
``rpc_url``, and the server corrects a charged cumulative that is behind (its corrective
402, believed only with a voucher this wallet signed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from x402.mechanisms.evm.batch_settlement.client import BatchSettlementClientContext
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id

from x402_meter.errors import ConfigurationError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

BOOK_VERSION: Final = 1
_LOG: Final = logging.getLogger("x402_meter.client")


@dataclass(frozen=True, slots=True)
class BookedChannel:
    """One channel as the book last recorded it."""

    channel_id: str
    network: str
    config: ChannelConfig
    state: BatchSettlementClientContext
    url: str | None = None
    """The last resource paid through it: where a later process asks for its refund."""
    retired: str | None = None
    """Why it signs no more vouchers (``close_sessions`` still takes its rest back)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": BOOK_VERSION,
            "channelId": self.channel_id,
            "network": self.network,
            "config": self.config.to_dict(),
            "url": self.url,
            "state": self.state.to_dict(),
            "retired": self.retired,
        }

    @classmethod
    def from_json(cls, data: Any, payer: str) -> BookedChannel | None:
        """The record in ``data`` if it is a well-formed record of one of ``payer``'s
        channels whose id is the hash of its config; None otherwise."""
        if not isinstance(data, dict) or data.get("version") != BOOK_VERSION:
            return None
        try:
            config = ChannelConfig.from_dict(data["config"])
            network = data["network"]
            state = BatchSettlementClientContext.from_dict(data["state"])
            channel_id = str(data["channelId"]).lower()
            if not isinstance(network, str) or not isinstance(config.salt, str):
                return None
            if compute_channel_id(config, network).lower() != channel_id:
                return None
            for amount in (state.balance, state.charged_cumulative_amount):
                if amount is not None and not (amount.isascii() and amount.isdigit()):
                    return None
        except Exception:  # any malformed part (a bad salt fails in the hash): not used
            return None
        if str(config.payer).lower() != payer.lower():
            return None
        url, retired = data.get("url"), data.get("retired")
        return cls(
            channel_id=channel_id,
            network=network,
            config=config,
            state=state,
            url=url if isinstance(url, str) else None,
            retired=retired if isinstance(retired, str) else None,
        )


class ChannelBook:
    """One directory of one payer's channel records, and the claims this process holds on
    them. Thread-safe."""

    def __init__(self, directory: str | os.PathLike[str], payer: str) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            raise ConfigurationError("session_store needs flock (Linux, macOS)")
        self.directory = Path(directory).expanduser()
        self.payer = payer.lower()
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"session_store {self.directory}: {exc}") from exc
        if not self.directory.is_dir():
            raise ConfigurationError(f"session_store {self.directory} is not a directory")
        self._lock = threading.Lock()
        self._claims: dict[str, IO[bytes]] = {}
        """The lock file held open (and ``flock``-ed) for each channel this process claimed."""

    def _path(self, channel_id: str, suffix: str) -> Path:
        name = channel_id.lower()
        if not (name.startswith("0x") and len(name) == 66 and _hex(name[2:])):
            raise ValueError(f"not a channel id: {channel_id!r}")
        return self.directory / f"{name}{suffix}"

    # -- claims -------------------------------------------------------------------------------

    def claim(self, channel_id: str) -> bool:
        """Claim ``channel_id`` for this process (True), unless another process holds it."""
        with self._lock:
            if channel_id in self._claims:
                return True
            handle = self._path(channel_id, ".lock").open("ab")  # held until let go
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                return False
            self._claims[channel_id] = handle
            return True

    def claimed(self, channel_id: str) -> bool:
        with self._lock:
            return channel_id in self._claims

    def close(self) -> None:
        """Let go of every claim (also what the process's exit does)."""
        with self._lock:
            claims, self._claims = self._claims, {}
        for handle in claims.values():
            handle.close()

    # -- records ------------------------------------------------------------------------------

    def read(self, channel_id: str) -> BookedChannel | None:
        path = self._path(channel_id, ".json")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            _LOG.warning("session_store: %s is unreadable (%s): left alone", path, exc)
            return None
        booked = BookedChannel.from_json(data, self.payer)
        if booked is None or booked.channel_id != channel_id.lower():
            _LOG.warning("session_store: %s is not a channel of %s: left alone", path, self.payer)
            return None
        return booked

    def records(self) -> list[BookedChannel]:
        """The records of this payer's channels that this process has not claimed (another
        process may hold some: ``claim`` says)."""
        found: list[BookedChannel] = []
        for path in sorted(self.directory.glob("0x*.json")):
            channel_id = path.name.removesuffix(".json")
            try:
                if self.claimed(channel_id):
                    continue
                booked = self.read(channel_id)
            except ValueError:
                continue
            if booked is not None:
                found.append(booked)
        return found

    def adopt(self, channel_id: str) -> BookedChannel | None:
        """Claim ``channel_id`` and read its record again (it may have changed or gone while
        another process held it); None if another process holds it or it is gone."""
        if not self.claim(channel_id):
            return None
        booked = self.read(channel_id)
        if booked is None:
            self._let_go(channel_id)
        return booked

    def write(self, booked: BookedChannel) -> None:
        """Record ``booked`` (atomically, readable by its owner only). Only a claimed
        channel is written (claimed first if this process made it): another process's is its
        own to write."""
        if not self.claim(booked.channel_id):
            _LOG.warning("session_store: channel %s is held elsewhere", booked.channel_id)
            return
        path = self._path(booked.channel_id, ".json")
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        body = json.dumps(booked.to_json(), indent=2) + "\n"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise

    def remove(self, channel_id: str) -> None:
        """Forget a channel with nothing left in it (its record, then its claim)."""
        if not self.claimed(channel_id):
            return
        with contextlib.suppress(FileNotFoundError):
            self._path(channel_id, ".json").unlink()
        with contextlib.suppress(FileNotFoundError):
            self._path(channel_id, ".lock").unlink()
        self._let_go(channel_id)

    def _let_go(self, channel_id: str) -> None:
        with self._lock:
            handle = self._claims.pop(channel_id, None)
        if handle is not None:
            handle.close()


def _hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


__all__ = ["BookedChannel", "ChannelBook"]
