"""Misconfiguration is loud: real uvicorn processes serving Starlette, FastAPI and Litestar.

A bad option stops the server at startup with the option's message (never a server that
starts and answers every request with a bare 500); a meter with nothing to meter says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.fault_harness import free_port
from tests.startup_apps import APP_ANSWER, METERED_ENV, OPTIONS_ENV, VALID
from x402_meter import X402Meter
from x402_meter.devstack.processes import ChildProcess, StartupError, uvicorn_ready
from x402_meter.errors import ConfigurationError

READY_WITHIN = 60.0
NOTHING_METERED = "X402Meter meters nothing: no routes= were given and no endpoint is marked"
"""The start of the warning (spelled out, so that these tests also run against older code)."""


@dataclass
class Run:
    """One uvicorn process: its exit code (None while it serves), its URL and its output."""

    process: ChildProcess
    log: Path
    url: str

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def output(self) -> str:
        """Everything it wrote (stopping it first, so that nothing is still on its way)."""
        self.process.stop()
        return self.log.read_text(errors="replace")


@contextmanager
def uvicorn_run(
    tmp_path: Path,
    factory: str,
    meter_options: dict[str, Any] | None = None,
    *uvicorn_args: str,
    metered: bool = False,
) -> Iterator[Run]:
    """``tests.startup_apps:<factory>`` in uvicorn, until it serves or exits."""
    port = free_port()
    env = {**os.environ, OPTIONS_ENV: json.dumps(meter_options or {})}
    if metered:
        env[METERED_ENV] = "1"
    log = tmp_path / f"{factory}-{port}.log"
    args = [sys.executable, "-m", "uvicorn", "--factory", f"tests.startup_apps:{factory}"]
    args += ["--host", "127.0.0.1", "--port", str(port), *uvicorn_args]
    process = ChildProcess(args, name="uvicorn", env=env, log_path=log, merge_stderr=True)
    # Without a lifespan uvicorn says nothing of the application's startup.
    ready = listening if "off" in uvicorn_args else uvicorn_ready()
    try:
        # It may exit before it serves (or never become ready, and then it was stopped).
        with contextlib.suppress(StartupError):
            process.wait_for_line(ready, timeout=READY_WITHIN)
        yield Run(process, log, f"http://127.0.0.1:{port}")
    finally:
        process.stop()


def listening(line: str) -> bool:
    return "Uvicorn running on" in line


BAD_OPTIONS = [
    ("starlette", {"pay_to": "0xYourAddress"}, "got '0xYourAddress'"),
    ("fastapi", {"pay_to": "0xYourAddress"}, "got '0xYourAddress'"),
    ("fastapi", {"price_per_token": 0.000002}, "price_per_token must be a str, int or Decimal"),
    ("fastapi", {"network": "base"}, "got 'base': for 'base' that is 'eip155:8453'"),
    ("litestar_plugin", {"pay_to": "0xYourAddress"}, "got '0xYourAddress'"),
    ("litestar_define_middleware", {"price_per_token": 0.000002}, "not float"),
]


@pytest.mark.parametrize(("factory", "bad", "message"), BAD_OPTIONS)
def test_a_bad_option_stops_the_server_with_its_message(
    tmp_path: Path, factory: str, bad: dict[str, Any], message: str
) -> None:
    with uvicorn_run(tmp_path, factory, bad) as run:
        returncode = run.returncode  # before output() stops it: it must have exited itself
        output = run.output()
    assert returncode not in (None, 0), output
    assert message in output
    assert "Application startup complete" not in output
    assert "Uvicorn running on" not in output


def test_litestar_define_middleware_is_refused_at_startup_pointing_to_the_plugin(
    tmp_path: Path,
) -> None:
    """Litestar routes before middleware: the receipts link of a meter given as route
    middleware would 404, so the server does not start."""
    with uvicorn_run(tmp_path, "litestar_define_middleware", metered=True) as run:
        returncode = run.returncode  # before output() stops it: it must have exited itself
        output = run.output()
    assert returncode not in (None, 0), output
    assert "DefineMiddleware(X402Meter, ...)" in output
    assert "every X-Payment-Receipt link would 404" in output
    assert "Use Litestar(plugins=[X402MeterPlugin(...)])" in output


@pytest.mark.parametrize("factory", ["starlette", "fastapi"])
def test_without_a_lifespan_a_bad_option_is_one_error_line_and_every_request_is_refused(
    tmp_path: Path, factory: str
) -> None:
    with uvicorn_run(tmp_path, factory, {"network": "base"}, "--lifespan", "off") as run:
        assert run.returncode is None, run.output()
        with httpx.Client(base_url=run.url) as client:
            answers = [client.post("/v1/chat/completions", json={}) for _ in range(3)]
            other = client.get("/anything")
        output = run.output()
    for answer in [*answers, other]:
        assert answer.status_code == 500
        assert answer.json()["reason"] == "configuration_error"
        assert APP_ANSWER["answer"] not in answer.text
        assert "eip155" not in answer.text  # the option stays in the server's log
    assert output.count("network must be a CAIP-2 EVM id") == 1, output
    assert "Traceback" not in output


@pytest.mark.parametrize("factory", ["starlette", "fastapi", "litestar_plugin"])
def test_a_meter_with_nothing_to_meter_warns_once_at_startup(tmp_path: Path, factory: str) -> None:
    with uvicorn_run(tmp_path, factory) as run:
        assert run.returncode is None, run.output()
        output = run.output()
    assert output.count(NOTHING_METERED) == 1, output


@pytest.mark.parametrize(
    ("factory", "metered", "options"),
    [
        ("fastapi", True, {}),
        ("litestar_plugin", True, {}),
        ("starlette", False, {"routes": ["POST /v1/chat/completions"]}),
    ],
)
def test_a_meter_with_something_to_meter_says_nothing_of_it(
    tmp_path: Path, factory: str, metered: bool, options: dict[str, Any]
) -> None:
    with uvicorn_run(tmp_path, factory, options, metered=metered) as run:
        assert run.returncode is None, run.output()
        with httpx.Client(base_url=run.url) as client:
            # Metered: a 402 (or 503: the facilitator of these apps is unreachable).
            answer = client.post("/v1/chat/completions", json={})
        output = run.output()
    assert answer.status_code in (402, 503), answer.text
    assert NOTHING_METERED not in output


# In process: the same meter, driven through the ASGI protocol directly, for many options.

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_CAIP2 = re.compile(r"eip155:[1-9][0-9]*")
BAD_OPTION = st.one_of(
    st.text().filter(lambda text: not _ADDRESS.fullmatch(text)).map(lambda t: {"pay_to": t}),
    st.floats().map(lambda number: {"price_per_token": number}),
    st.text().filter(lambda text: not _CAIP2.fullmatch(text)).map(lambda t: {"network": t}),
    st.sampled_from(["base", "base-sepolia", "polygon"]).map(lambda t: {"network": t}),
)


async def lifespan_startup(app: Any) -> list[dict[str, Any]]:
    """What ``app`` answers a server's ``lifespan.startup``."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if sent:  # startup answered: a server that carries on would ask for shutdown
            return {"type": "lifespan.shutdown"}
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent


async def post(app: Any, path: str) -> tuple[int, bytes]:
    status, body = 0, b""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"model": "m"}', "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            body += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    return status, body


@settings(max_examples=200, deadline=None)
@given(bad=BAD_OPTION)
def test_a_bad_option_fails_the_lifespan_with_its_message_and_no_request_reaches_the_app(
    bad: dict[str, Any],
) -> None:
    runs: list[str] = []

    async def chat(request: Request) -> JSONResponse:
        runs.append(request.url.path)
        return JSONResponse(APP_ANSWER)

    options = {**VALID, **bad}
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    app.add_middleware(X402Meter, **options)
    with pytest.raises(ConfigurationError) as called_directly:  # still raises at once
        X402Meter(app, **options)
    startup = anyio.run(lifespan_startup, app)
    assert [message["type"] for message in startup] == ["lifespan.startup.failed"]
    assert str(called_directly.value) in startup[0]["message"]
    status, body = anyio.run(post, app, "/v1/chat/completions")
    assert (status, json.loads(body)["reason"]) == (500, "configuration_error")
    assert runs == []
