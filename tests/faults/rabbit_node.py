"""A private RabbitMQ node for fault tests: free ports, its own data, stoppable at will.

It runs beside the system node (which it never touches: every ``rabbitmqctl`` call names this
node with ``-n``). The Debian wrapper ``rabbitmq-server`` re-runs itself as the ``rabbitmq``
user, so the node's directory belongs to that user. ``stop()`` then ``start()`` keeps the
directory, so durable queues and persistent messages survive, as on a real broker restart.

If a test run dies without cleaning up, the next ``RabbitNode`` finds the orphan (its owner
pid is gone) and shuts it down: private nodes never pile up.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

_DIR_PREFIX = "tcelery-rabbit-"
_DIR_RE = re.compile(rf"^{_DIR_PREFIX}(\d+)-[0-9a-f]+$")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class RabbitNodeError(RuntimeError):
    """The private node could not be started, queried or stopped."""


class RabbitNode:
    """One private RabbitMQ node (``start``, ``stop``, ``restart``, alarms, ``destroy``)."""

    def __init__(self, base: str | None = None) -> None:
        tag = uuid.uuid4().hex[:8]
        self.dir = Path(base or tempfile.gettempdir(), f"{_DIR_PREFIX}{os.getpid()}-{tag}")
        self.name = f"tcf{os.getpid()}x{tag}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        while self.dist_port == self.port:
            self.dist_port = free_port()
        self.running = False
        self.alarmed = False  # a memory alarm was raised through this object and not cleared

    def __repr__(self) -> str:
        return f"<RabbitNode {self.name} :{self.port} {'up' if self.running else 'down'}>"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    # -- lifecycle ------------------------------------------------------------------------
    def _prepare(self) -> None:
        if self.dir.exists():
            return
        self.dir.mkdir(mode=0o755)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            # the alarm tests lower the watermark by hand; keep the disk alarm out of the way
            "disk_free_limit.absolute = 1MB\n")
        (self.dir / "nodename").write_text(self.name)
        try:
            user = pwd.getpwnam("rabbitmq")
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
        except (KeyError, PermissionError) as exc:
            raise RabbitNodeError(
                f"cannot prepare a private RabbitMQ node ({exc!r}): the fault tests need "
                "rabbitmq-server installed with its 'rabbitmq' user, and to run as root or "
                "as that user") from exc

    def _env(self) -> dict[str, str]:
        d = str(self.dir)
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": f"{d}/mnesia",
            "RABBITMQ_LOG_BASE": f"{d}/log",
            "RABBITMQ_PID_FILE": f"{d}/pid",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{d}/enabled_plugins",
            "RABBITMQ_CONFIG_FILE": f"{d}/rabbitmq",
        }

    def start(self, timeout: float = 60.0) -> RabbitNode:
        """Start the node (again, with the same data) and wait until it accepts AMQP."""
        _reap_orphans()
        self._prepare()
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "pid").unlink()
        done = subprocess.run(["rabbitmq-server", "-detached"], env=self._env(),
                              capture_output=True, timeout=30, check=False)
        if done.returncode != 0:
            raise RabbitNodeError(f"rabbitmq-server -detached failed: {done.stderr!r}")
        self.running = True
        self.alarmed = False  # a restart resets the watermark to the configured one
        deadline = time.monotonic() + timeout
        # -detached returns before the node registers with epmd; await_startup fails fast
        # until it has, so retry it within the deadline.
        while True:
            left = deadline - time.monotonic()
            probe = self.ctl("await_startup", "--timeout", str(max(int(left), 1)),
                             check=False, timeout=max(left, 1) + 10)
            if probe.returncode == 0 and _port_open(self.port):
                return self
            if time.monotonic() > deadline:
                raise RabbitNodeError(f"{self} did not start within {timeout:g}s:\n"
                                      f"{probe.stdout}{probe.stderr}\n{self.log_tail()}")
            time.sleep(0.3)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node cleanly (as an operator would); its data stays for ``start()``."""
        if not self.running:
            return
        done = self.ctl("shutdown", check=False, timeout=timeout)
        if done.returncode != 0 and self._pid() is not None:
            self.kill()
        self.running = False

    def kill(self) -> None:
        """SIGKILL the node's VM (a crash): only ever the pid this node wrote itself."""
        pid = self._pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.running = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the node and delete its directory. Idempotent; never raises."""
        with contextlib.suppress(Exception):
            self.stop(timeout=30)
        with contextlib.suppress(Exception):
            if self._pid() is not None:
                self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _pid(self) -> int | None:
        try:
            pid = int((self.dir / "pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def log_tail(self, chars: int = 3000) -> str:
        logs = sorted((self.dir / "log").glob("*.log")) if (self.dir / "log").exists() else []
        return "".join(p.read_text(errors="replace")[-chars:] for p in logs)

    # -- operations -----------------------------------------------------------------------
    def ctl(self, *args: str, check: bool = True,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n <this node> ...``."""
        done = subprocess.run(["rabbitmqctl", "-n", self.name, *args], capture_output=True,
                              text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise RabbitNodeError(f"rabbitmqctl {' '.join(args)} failed "
                                  f"({done.returncode}): {done.stdout}{done.stderr}")
        return done

    def queue(self, name: str) -> tuple[int, int] | None:
        """``(messages, consumers)`` of a queue, or None if it does not exist (a passive
        declare over a short-lived AMQP connection: no management plugin needed)."""
        import pika
        from pika.exceptions import ChannelClosedByBroker

        conn = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", self.port, socket_timeout=5, blocked_connection_timeout=5))
        try:
            ok = conn.channel().queue_declare(name, passive=True)
        except ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return None
            raise
        finally:
            if conn.is_open:
                conn.close()
        return int(ok.method.message_count), int(ok.method.consumer_count)

    def delete_queue(self, name: str) -> None:
        import pika

        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", self.port,
                                                                 socket_timeout=5))
        try:
            conn.channel().queue_delete(name)
        finally:
            conn.close()

    def eval(self, expression: str) -> str:
        return self.ctl("eval", expression).stdout.strip()

    def alarms(self) -> str:
        """The node's active resource alarms, as Erlang terms (``[]`` when none)."""
        return self.eval("rabbit_alarm:get_alarms().")

    def set_memory_watermark(self, fraction: float) -> None:
        self.ctl("set_vm_memory_high_watermark", repr(fraction))

    def raise_memory_alarm(self, timeout: float = 20.0) -> None:
        """Lower the memory watermark below use, and wait until the alarm is on."""
        self.alarmed = True
        self.set_memory_watermark(0.0000001)
        self._await_alarm(True, timeout)

    def clear_memory_alarm(self, timeout: float = 20.0) -> None:
        self.set_memory_watermark(0.4)
        self._await_alarm(False, timeout)
        self.alarmed = False

    def _await_alarm(self, on: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while ("memory" in self.alarms()) != on:
            if time.monotonic() > deadline:
                raise RabbitNodeError(f"memory alarm still {'off' if on else 'on'} after "
                                      f"{timeout:g}s")
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_orphans() -> None:
    """Shut down private nodes whose test process is gone, and delete their directories."""
    base = Path(tempfile.gettempdir())
    for path in base.glob(f"{_DIR_PREFIX}*"):
        match = _DIR_RE.match(path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(Exception):
            name = (path / "nodename").read_text().strip()
            if name.startswith("tcf"):
                subprocess.run(["rabbitmqctl", "-n", name, "shutdown"], capture_output=True,
                               timeout=30, check=False)
        shutil.rmtree(path, ignore_errors=True)
