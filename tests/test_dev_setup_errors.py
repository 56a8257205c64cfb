"""`x402-meter dev`'s setup problems are one line that names the fix, exit status 2.

And `--install-anvil` fixes the commonest one: a pip-installed x402-meter (a copy of the
package with no node_modules anywhere above it, no anvil on PATH) gets anvil from npm, here
a registry served on loopback, and the stack starts.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Final

import anyio
import pytest

import x402_meter
from x402_meter.devstack.anvil import ANVIL_VERSION, npm_package
from x402_meter.devstack.asgi_server import serving

REPO: Final = Path(__file__).resolve().parents[1]
PACKAGE_NAME: Final = npm_package().rsplit("@", 1)[0]
INSTALLED_ANVIL: Final = REPO.joinpath("node_modules", *PACKAGE_NAME.split("/"))


def x402_meter_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "x402_meter", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Exit status 2, nothing on stdout, one ``error:`` line on stderr; return it."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_a_missing_anvil_is_one_line_that_says_how_to_install_it() -> None:
    result = x402_meter_cli("dev", X402_METER_ANVIL="/nonexistent/anvil")

    line = assert_one_line_error(result)
    assert "X402_METER_ANVIL=/nonexistent/anvil is not a file" in line
    assert f"npm install --no-save --ignore-scripts {npm_package()}" in line
    assert "x402-meter dev --install-anvil" in line


def test_a_taken_port_is_one_line_naming_it_and_the_flags() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = x402_meter_cli("dev", "--facilitator-port", str(port))

    line = assert_one_line_error(result)
    assert f"port {port} for the facilitator is taken" in line
    assert "--port BASE" in line


def test_a_dev_api_key_the_facilitator_would_refuse_is_one_line() -> None:
    line = assert_one_line_error(x402_meter_cli("dev", "--api-key", "short"))
    assert "at least 16 characters" in line


def npm_tarball(package_dir: Path) -> bytes:
    """The package directory as npm packs it: a gzipped tar under ``package/``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
        tar.add(package_dir, arcname="package")
    return out.getvalue()


def loopback_registry(tarball: bytes, asked: list[str]) -> Callable[..., Awaitable[None]]:
    """An npm registry that knows one package: this platform's anvil, at the pinned version.

    Each path asked for is appended to ``asked``.
    """
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        host = dict(scope["headers"])[b"host"].decode()
        asked.append(scope["path"])
        if scope["path"].endswith(".tgz"):
            body, kind = tarball, b"application/octet-stream"
        else:
            version = {
                "name": PACKAGE_NAME,
                "version": ANVIL_VERSION,
                "bin": {"anvil": "bin/anvil"},
                "dist": {"tarball": f"http://{host}/anvil.tgz", "integrity": integrity},
            }
            packument = {
                "name": PACKAGE_NAME,
                "dist-tags": {"latest": ANVIL_VERSION},
                "versions": {ANVIL_VERSION: version},
            }
            body, kind = json.dumps(packument).encode(), b"application/json"
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.mark.anyio
@pytest.mark.skipif(not INSTALLED_ANVIL.is_dir(), reason=f"needs {PACKAGE_NAME} in node_modules")
async def test_install_anvil_gets_it_from_npm_when_nothing_else_has_it(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    assert npm is not None, "npm is part of the dev toolchain (make install)"
    site = tmp_path / "site"  # x402-meter as pip installs it: no node_modules above it
    shutil.copytree(
        Path(x402_meter.__file__).parent,
        site / "x402_meter",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    path = os.pathsep.join(dict.fromkeys([str(Path(npm).parent), "/usr/bin", "/bin"]))
    assert shutil.which("anvil", path=path) is None
    cache = tmp_path / "cache"
    work = tmp_path / "project"
    work.mkdir()
    env = {
        **os.environ,
        "PATH": path,
        "PYTHONPATH": str(site),
        "XDG_CACHE_HOME": str(cache),
        "npm_config_cache": str(tmp_path / "npm-cache"),  # not the user's npm cache
        "npm_config_update_notifier": "false",
    }
    env.pop("X402_METER_ANVIL", None)

    def dev(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "x402_meter", "dev", "--json", *args],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    missing = dev()
    out, err = missing.communicate(timeout=120)
    refused = subprocess.CompletedProcess(missing.args, missing.returncode, out, err)
    assert "x402-meter dev --install-anvil" in assert_one_line_error(refused)

    tarball = await anyio.to_thread.run_sync(npm_tarball, INSTALLED_ANVIL)
    asked: list[str] = []
    async with serving(loopback_registry(tarball, asked)) as registry:
        env["npm_config_registry"] = registry + "/"
        process = await anyio.to_thread.run_sync(dev, "--install-anvil")
        try:
            assert process.stdout is not None
            info = json.loads(await anyio.to_thread.run_sync(process.stdout.readline))
        finally:
            process.kill()
            _, err = process.communicate()

    assert info["network"] == "eip155:31337"  # the stack started, on the installed anvil
    assert f"installing {npm_package()} with npm" in err
    assert asked == [f"/{PACKAGE_NAME}", "/anvil.tgz"]
    installed = cache / "x402-meter" / f"anvil-{ANVIL_VERSION}" / "node_modules"
    assert installed.joinpath(*PACKAGE_NAME.split("/"), "bin", "anvil").is_file()
