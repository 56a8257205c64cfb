"""Child processes that never outlive the stack that started them.

Each child is stopped by PID (SIGTERM, then SIGKILL after a grace period). On Linux the
child also gets ``PR_SET_PDEATHSIG`` so that it dies with its parent even when the parent
is killed with SIGKILL and no ``finally`` block runs: a test run that is interrupted must
not leave an anvil or a facilitator listening behind it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from x402_meter.errors import StartupError as StartupError

_PR_SET_PDEATHSIG = 1


# Resolved in the parent: between fork and exec the child may only do async-signal-safe work.
_LIBC = ctypes.CDLL(None) if sys.platform == "linux" else None


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the child between fork and exec: ask the kernel for SIGKILL when we orphan."""
    assert _LIBC is not None
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _death_signal_hook() -> Callable[[], None] | None:
    # PDEATHSIG fires when the *thread* that forked exits, so it is only safe from the main
    # thread; a stack started from a worker thread would die with that thread.
    if _LIBC is None or threading.current_thread() is not threading.main_thread():
        return None
    return functools.partial(_die_with_parent, os.getpid())


class ChildProcess:
    """A started child process whose stdout is read line by line on a daemon thread.

    The reader thread matters: anvil logs every RPC call, and a pipe nobody drains would
    eventually block the child. ``wait_for_line`` waits on an event set by that thread,
    so readiness costs no polling.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        merge_stderr: bool = False,
    ) -> None:
        """``merge_stderr`` reads stderr as stdout (for programs that log there, like uvicorn)."""
        self.name = name
        self._log_path = log_path
        self._log: IO[bytes] | None = log_path.open("ab") if log_path else None
        self._lines: list[str] = []
        self._matched: str | None = None
        self._predicate: Callable[[str], bool] | None = None
        self._event = threading.Event()
        self._watchers: list[tuple[Callable[[str], bool], threading.Event]] = []
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else (self._log or subprocess.DEVNULL),
            env=dict(env) if env is not None else None,
            preexec_fn=_death_signal_hook(),
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the children twice
        )
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def poll(self) -> int | None:
        return self._process.poll()

    def wait(self, timeout: float) -> int:
        """Its exit status, once it has exited (``TimeoutExpired`` after ``timeout``)."""
        return self._process.wait(timeout)

    def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        for raw in stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._lock:
                if self._matched is None:
                    self._lines.append(line)
                    if self._predicate is not None and self._predicate(line):
                        self._matched = line
                        self._event.set()
            if self._log is not None:
                self._log.write(raw)
            if self._watchers:
                self._notify(line)
        # EOF: the child has exited (or closed stdout); wake any waiter so it can report.
        self._event.set()

    def _notify(self, line: str) -> None:
        if self._log is not None:
            self._log.flush()  # what the watcher is told of is in the log file too
        with self._lock:
            matched = [entry for entry in self._watchers if entry[0](line)]
            for entry in matched:
                self._watchers.remove(entry)
        for _, event in matched:
            event.set()

    def expect_line(self, predicate: Callable[[str], bool]) -> threading.Event:
        """An event set once a line read from now on satisfies ``predicate`` (and is in the
        log file): register it before causing the line, then wait on it."""
        event = threading.Event()
        with self._lock:
            self._watchers.append((predicate, event))
        return event

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """Block until a stdout line satisfies ``predicate``; raise StartupError otherwise."""
        with self._lock:
            self._predicate = predicate
            for line in self._lines:
                if predicate(line):
                    self._matched = line
                    return line
        if not self._event.wait(timeout) or self._matched is None:
            self.stop()
            with self._lock:
                seen = "\n".join(self._lines[-20:]) or "(no output)"
            if self._log_path is not None and self._log_path.exists():
                log_tail = self._log_path.read_text(errors="replace").splitlines()[-20:]
                seen += "\n" + "\n".join(log_tail)
            raise StartupError(f"{self.name} did not become ready within {timeout:g}s:\n{seen}")
        return self._matched

    def stop(self, grace: float = 5.0) -> None:
        """Stop the child by PID: SIGTERM, then SIGKILL if it ignores us; reap it."""
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._reader.join(timeout=grace)
        if self._process.stdout is not None:
            self._process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None


def uvicorn_ready(workers: int = 1) -> Callable[[str], bool]:
    """A ``wait_for_line`` predicate: uvicorn listens and all its workers have started.

    One worker logs "Application startup complete" before it binds its socket; only
    "Uvicorn running on" says a connection will be accepted. With several workers the
    supervisor binds first and each worker then starts: both lines are waited for.
    """
    listening = False
    started = 0

    def ready(line: str) -> bool:
        nonlocal listening, started
        listening = listening or "Uvicorn running on" in line
        started += "Application startup complete" in line
        return listening and started >= workers

    return ready
