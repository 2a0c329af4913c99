"""Child processes the runner owns: each in its own process group, all killed at the end.

Every process the benchmark starts goes through :class:`Managed`, which records it in a
module-level registry. :func:`stop_all` (run from ``finally``, ``atexit`` and the SIGINT /
SIGTERM handlers) sends SIGTERM to each group, waits a bounded time, then SIGKILLs it, so
neither an error nor Ctrl-C leaves a worker or a server behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

import psutil  # type: ignore[import-untyped]

_REGISTRY: list[Managed] = []


class StartError(RuntimeError):
    """A child did not become ready in time, or died while starting."""


class Managed:
    """One child process in a new session (so its pid is its process group id)."""

    #: A Celery worker's node name (``celery -n``), for remote control; "" otherwise.
    node: str = ""

    def __init__(self, name: str, argv: Sequence[str], *, cwd: Path, log_dir: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv, cwd=cwd, env={**os.environ, **(env or {})}, stdout=self._log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        _REGISTRY.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def process(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def tail(self, chars: int = 3000) -> str:
        """The end of the child's combined stdout/stderr, for error messages."""
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``check`` until it is true; StartError if the child dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise StartError(f"{self.name} exited with {self.proc.returncode} before "
                                 f"{what}:\n{self.tail()}")
            with contextlib.suppress(Exception):
                if check():
                    return
            if time.monotonic() > deadline:
                raise StartError(f"{self.name}: no {what} within {timeout:g}s:\n{self.tail()}")
            time.sleep(0.1)

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        """Ready once ``url`` answers with any HTTP status (even 4xx/5xx)."""
        def answers() -> bool:
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(url, timeout=2).close()
            return True
        self.wait_ready(answers, timeout, f"HTTP answer on {url}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole group, SIGKILL it if it has not exited within ``timeout``."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        # Kill whatever is left in the group (pool children of a worker, for instance).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()
        if self in _REGISTRY:
            _REGISTRY.remove(self)


def stop_all() -> None:
    """Stop every child still registered, newest first (servers before the worker)."""
    for managed in reversed(list(_REGISTRY)):
        with contextlib.suppress(Exception):
            managed.stop(timeout=5.0)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    stop_all()
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Make Ctrl-C, SIGTERM and interpreter exit stop every child."""
    atexit.register(stop_all)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def free_port() -> int:
    """A loopback TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
