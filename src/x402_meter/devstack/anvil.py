"""Find, install and start anvil, the local EVM dev chain.

anvil ships as a prebuilt binary inside the npm package ``@foundry-rs/anvil-<os>-<arch>``;
``make install`` puts it in the project's ``node_modules``. A foundry install on PATH works
as well, ``X402_METER_ANVIL`` points at any other binary, and ``install_anvil()`` (what
``x402-meter dev --install-anvil`` runs) puts it in x402-meter's own cache directory, so
that a ``pip install``-ed x402-meter finds it from any directory.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from x402_meter.devstack.processes import ChildProcess
from x402_meter.errors import AnvilInstallError as AnvilInstallError
from x402_meter.errors import AnvilNotFoundError as AnvilNotFoundError

ANVIL_VERSION: Final = "1.7.1"
ANVIL_ENV: Final = "X402_METER_ANVIL"
"""Names an anvil binary to use instead of searching for one."""
_LISTENING = re.compile(r"Listening on (?P<host>[\d.]+):(?P<port>\d+)")


def npm_package() -> str:
    """This platform's anvil npm package, pinned: ``@foundry-rs/anvil-linux-amd64@1.7.1``."""
    system = {"Linux": "linux", "Darwin": "darwin", "Windows": "win32"}.get(platform.system(), "")
    machine = {"x86_64": "amd64", "AMD64": "amd64", "arm64": "arm64", "aarch64": "arm64"}.get(
        platform.machine(), platform.machine()
    )
    return f"@foundry-rs/anvil-{system}-{machine}@{ANVIL_VERSION}"


def _binary_in(prefix: Path) -> Path:
    """Where the npm package puts anvil under an install prefix."""
    name = npm_package().rsplit("@", 1)[0]
    return prefix.joinpath("node_modules", *name.split("/"), "bin", "anvil")


def anvil_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The prefix ``install_anvil`` installs into: ``$XDG_CACHE_HOME/x402-meter/anvil-VERSION``."""
    env = os.environ if environ is None else environ
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache, "x402-meter", f"anvil-{ANVIL_VERSION}")


def install_hint() -> str:
    """How to get anvil, in one line (it ends the not-found errors)."""
    return (
        f"run `x402-meter dev --install-anvil` (npm installs {npm_package()} into"
        f" {anvil_cache_dir()}) or `npm install --no-save --ignore-scripts {npm_package()}`"
        " in your project"
    )


def find_anvil() -> Path:
    """Locate anvil: $X402_METER_ANVIL, node_modules (cwd upwards), PATH, then the cache."""
    override = os.environ.get(ANVIL_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise AnvilNotFoundError(
                f"anvil not found: {ANVIL_ENV}={override} is not a file; point it at an anvil"
                f" binary, or unset it and {install_hint()}"
            )
        return path
    relative = _binary_in(Path())
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
    cached = _binary_in(anvil_cache_dir())
    if cached.is_file():
        return cached
    raise AnvilNotFoundError(
        f"anvil not found: {install_hint()}, or set {ANVIL_ENV} to an anvil binary"
    )


def install_anvil() -> Path:
    """``npm install`` this platform's pinned anvil into the cache directory; return it.

    npm honours the user's npm configuration (registry mirror, proxy, cache). Its output
    goes to our stderr, so the person waiting sees the download happen.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise AnvilInstallError(
            "cannot install anvil: npm is not on PATH (install Node.js, which brings npm,"
            f" or set {ANVIL_ENV} to an anvil binary)"
        )
    prefix = anvil_cache_dir()
    prefix.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--no-save", "--ignore-scripts", "--no-audit", "--no-fund"]
    command += ["--prefix", str(prefix), npm_package()]
    completed = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=2, check=False)
    binary = _binary_in(prefix)
    if completed.returncode != 0 or not binary.is_file():
        raise AnvilInstallError(
            f"`{shlex.join(command)}` failed (exit {completed.returncode}); see npm's output above"
        )
    return binary


@dataclass(frozen=True, slots=True)
class RunningAnvil:
    process: ChildProcess
    rpc_url: str
    chain_id: int

    def stop(self) -> None:
        self.process.stop()


def start_anvil(
    *,
    chain_id: int = 31337,
    host: str = "127.0.0.1",
    port: int = 0,
    log_path: Path | None = None,
) -> RunningAnvil:
    """Start anvil and wait until it listens; ``port=0`` lets the kernel pick a free one."""
    process = ChildProcess(
        [
            str(find_anvil()),
            "--host",
            host,
            "--port",
            str(port),
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
