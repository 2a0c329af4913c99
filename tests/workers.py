"""Start and stop real ``celery worker`` processes for the tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def announce_ready(sender: Any = None, **_: Any) -> None:
    """A ``worker_ready`` receiver for the test workers' apps: touch the marker file
    ``CeleryWorker.start`` waits for (``worker_ready.connect(announce_ready)``)."""
    ready_dir = os.environ.get("TCELERY_TEST_READY_DIR")
    if ready_dir and sender is not None:
        Path(ready_dir, sender.hostname.split("@")[0]).touch()


class CeleryWorker:
    """One ``celery -A <app> worker`` subprocess in its own process group."""

    def __init__(self, app: str, queues: list[str], name: str, *, concurrency: int = 2,
                 pool: str = "prefork", cwd: Path = ROOT, env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.app, self.queues, self.name = app, queues, name
        self.concurrency, self.pool, self.cwd = concurrency, pool, cwd
        self.env = env or {}
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_dir = tempfile.mkdtemp(prefix="tcelery-worker-")
        self.log_path = Path(self.ready_dir, "worker.log")

    def start(self, timeout: float = 60.0) -> CeleryWorker:
        env = {**os.environ, **self.env, "TCELERY_TEST_READY_DIR": self.ready_dir,
               "PYTHONPATH": os.pathsep.join([str(self.cwd), str(ROOT),
                                              os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "celery", "-A", self.app, "worker",
               "-Q", ",".join(self.queues), "-n", f"{self.name}@%h",
               "-c", str(self.concurrency), "-P", self.pool, "-l", "INFO",
               "--without-gossip", "--without-mingle", *self.extra_args]
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the worker
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        marker = Path(self.ready_dir, self.name)
        while not (marker.exists() or self._says_ready()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"celery worker {self.name} exited with "
                                   f"{self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"celery worker {self.name} not ready in {timeout}s:\n"
                                   f"{self.log()}")
            time.sleep(0.1)
        return self

    def _says_ready(self) -> bool:
        """Celery logs ``<name>@<host> ready.`` at INFO once it consumes (any app)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"{self.name}@" in text and " ready." in text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def child_pids(self) -> list[int]:
        """PIDs of the pool processes (the ones that run tasks)."""
        import psutil

        assert self.proc is not None
        return [c.pid for c in psutil.Process(self.proc.pid).children()]

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown; SIGKILL the whole group if it does not exit in time. The worker's
        directory (its log) goes too, unless ``TCELERY_KEEP_WORKER_LOGS=1``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if os.environ.get("TCELERY_KEEP_WORKER_LOGS") != "1":
            shutil.rmtree(self.ready_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the worker and its pool at once (a crash, as far as the broker can tell)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
