"""Secrets the gateway holds: read from the environment or a file, never from its config.

A ``Secret`` never shows its value in ``repr``/``str`` (so a config or an error that is
logged cannot carry it); the value is taken with ``reveal()`` where a header is built.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from x402_meter.errors import ConfigurationError

_PRINTABLE: Final = re.compile(r"[\x21-\x7e]+")


class Secret:
    """A credential: compared and hashed by identity, shown as ``Secret(<name>)``."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source
        """Where it came from (``$OPENAI_API_KEY``, a file's path): safe to show."""

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.source})"

    __str__ = __repr__


def read_secret(
    field: str,
    *,
    env_name: object,
    file_name: object,
    environ: Mapping[str, str],
    base_dir: Path,
    required: bool,
) -> Secret | None:
    """The secret named by ``<field>_env`` or ``<field>_file`` (one of them), checked: a
    missing variable, an unreadable or empty file, or a value with spaces or control
    characters stops the start with a message naming the field and the source."""
    if env_name is not None and file_name is not None:
        raise ConfigurationError(f"{field}: give {field}_env or {field}_file, not both")
    if env_name is None and file_name is None:
        if required:
            raise ConfigurationError(f"{field}: name its source, {field}_env or {field}_file")
        return None
    if env_name is not None:
        if not isinstance(env_name, str) or not env_name:
            raise ConfigurationError(f"{field}_env must name an environment variable")
        value = environ.get(env_name, "")
        source = f"${env_name}"
        if not value:
            raise ConfigurationError(f"{field}: the environment variable {env_name} is not set")
    else:
        if not isinstance(file_name, str) or not file_name:
            raise ConfigurationError(f"{field}_file must name a file")
        path = (base_dir / file_name).resolve()
        source = str(path)
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(f"{field}: cannot read {path}: {exc.strerror}") from None
        if not value:
            raise ConfigurationError(f"{field}: {path} is empty")
    value = value.strip()
    if not _PRINTABLE.fullmatch(value):
        raise ConfigurationError(
            f"{field}: the value from {source} must be printable ASCII without spaces"
        )
    return Secret(value, source)
