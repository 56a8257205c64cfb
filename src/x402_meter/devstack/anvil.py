"""Find and start anvil, the local EVM dev chain.

anvil ships as a prebuilt binary inside the npm package ``@foundry-rs/anvil-<os>-<arch>``;
``make install`` puts it in the project's ``node_modules``. A foundry install on PATH works
as well, and ``X402_METER_ANVIL`` points at any other binary.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from x402_meter.devstack.processes import ChildProcess

ANVIL_VERSION: Final = "1.7.1"
_LISTENING = re.compile(r"Listening on (?P<host>[\d.]+):(?P<port>\d+)")


class AnvilNotFoundError(FileNotFoundError):
    """No anvil binary could be found."""


def _npm_package_name() -> str:
    system = {"Linux": "linux", "Darwin": "darwin", "Windows": "win32"}.get(platform.system(), "")
    machine = {"x86_64": "amd64", "AMD64": "amd64", "arm64": "arm64", "aarch64": "arm64"}.get(
        platform.machine(), platform.machine()
    )
    return f"@foundry-rs/anvil-{system}-{machine}"


def find_anvil() -> Path:
    """Locate the anvil binary: $X402_METER_ANVIL, node_modules (cwd upwards), then PATH."""
    override = os.environ.get("X402_METER_ANVIL")
    if override:
        path = Path(override)
        if not path.is_file():
            raise AnvilNotFoundError(f"X402_METER_ANVIL={override} is not a file")
        return path
    relative = Path("node_modules", *_npm_package_name().split("/"), "bin", "anvil")
    # The current directory's ancestors cover `make`/pytest runs; the package's own
    # ancestors cover an editable install used from another directory.
    for base in (Path.cwd(), Path(__file__).resolve()):
        for directory in (base, *base.parents):
            candidate = directory / relative
            if candidate.is_file():
                return candidate
    on_path = shutil.which("anvil")
    if on_path:
        return Path(on_path)
    raise AnvilNotFoundError(
        "anvil not found. Install it into this project with\n"
        f"  npm install --no-save --ignore-scripts {_npm_package_name()}@{ANVIL_VERSION}\n"
        "or set X402_METER_ANVIL to an anvil binary."
    )


@dataclass(frozen=True, slots=True)
class RunningAnvil:
    process: ChildProcess
    rpc_url: str
    chain_id: int

    def stop(self) -> None:
        self.process.stop()


def start_anvil(
    *, chain_id: int = 31337, host: str = "127.0.0.1", log_path: Path | None = None
) -> RunningAnvil:
    """Start anvil on a free loopback port (the kernel picks it) and wait until it listens."""
    process = ChildProcess(
        [
            str(find_anvil()),
            "--host",
            host,
            "--port",
            "0",
            "--chain-id",
            str(chain_id),
            "--accounts",
            "10",
        ],
        name="anvil",
        log_path=log_path,
    )
    line = process.wait_for_line(lambda text: _LISTENING.search(text) is not None, timeout=30)
    match = _LISTENING.search(line)
    assert match is not None
    return RunningAnvil(process, f"http://{match['host']}:{match['port']}", chain_id)
