"""A private ``redis-server`` for fault tests: a free port, its own directory, stoppable at will.

It never touches the system Redis on 6379. No persistence (``--save "" --appendonly no``):
``stop()`` then ``start()`` brings back an empty server on the same port, as after a crash of
a cache-only Redis. ``destroy()`` kills it and deletes its directory; a server orphaned by a
killed test run (its owner pid is gone) is reaped by the next ``RedisNode``, and one still
running when the interpreter exits is killed by an ``atexit`` hook.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from pathlib import Path

import redis

_DIR_PREFIX = "tcelery-redis-"
_DIR_RE = re.compile(rf"^{_DIR_PREFIX}(\d+)-[0-9a-f]+$")
_LIVE: weakref.WeakSet[RedisNode] = weakref.WeakSet()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisNodeError(RuntimeError):
    """The private redis-server could not be started or stopped."""


class RedisNode:
    """One private ``redis-server`` (``start``, ``stop``, ``restart``, ``kill``, ``destroy``)."""

    def __init__(self, base: str | None = None) -> None:
        tag = uuid.uuid4().hex[:8]
        self.dir = Path(base or tempfile.gettempdir(), f"{_DIR_PREFIX}{os.getpid()}-{tag}")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "redis.log"

    def __repr__(self) -> str:
        return f"<RedisNode :{self.port} {'up' if self.running else 'down'}>"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **options: object) -> redis.Redis:
        """A plain (blocking) client straight to this server."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5,
                           socket_connect_timeout=5, **options)  # type: ignore[arg-type]

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> RedisNode:
        """Start the server (again, on the same port) and wait until it answers PING."""
        if self.running:
            return self
        _reap_orphans()
        if shutil.which("redis-server") is None:
            raise RedisNodeError("redis-server is not on PATH: the Redis fault tests start a "
                                 "private one (Debian/Ubuntu: apt-get install redis-server)")
        self.dir.mkdir(mode=0o755, exist_ok=True)
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", str(self.dir),
               "--pidfile", str(self.dir / "redis.pid"), "--daemonize", "no",
               "--logfile", str(self.log_path), "--protected-mode", "no"]
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        (self.dir / "owner").write_text(f"{os.getpid()} {self.proc.pid}\n")
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RedisNodeError(f"redis-server exited with {self.proc.returncode}:\n"
                                     f"{self.log_tail()}")
            with contextlib.suppress(redis.RedisError, OSError):
                client = self.client()
                try:
                    if client.ping():
                        return self
                finally:
                    client.close()
            if time.monotonic() > deadline:
                self.kill()
                raise RedisNodeError(f"{self} did not answer PING within {timeout:g}s:\n"
                                     f"{self.log_tail()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server as an operator would (SIGTERM: it closes every client
        connection); SIGKILL if it does not exit in time. Its port stays ours."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server (a crash). Reaps it."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the server and delete its directory. Idempotent; never raises."""
        with contextlib.suppress(Exception):
            self.stop(timeout=5)
        with contextlib.suppress(Exception):
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        _LIVE.discard(self)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_redis(pid: int) -> bool:
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _reap_orphans() -> None:
    """Kill private servers whose test process is gone, and delete their directories."""
    for path in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*"):
        match = _DIR_RE.match(path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(Exception):
            pid = int((path / "owner").read_text().split()[1])
            if _alive(pid) and _is_redis(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)


@atexit.register
def _destroy_all() -> None:
    for node in list(_LIVE):
        node.destroy()
