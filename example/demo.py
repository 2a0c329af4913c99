"""Run the whole example with one command: ``python demo.py``.

With RabbitMQ answering (``BROKER_URL``, or ``--broker URL``), it starts the Celery worker
(``celery -A backend.v1 worker -Q payment_default1 --concurrency 2``) and the Tornado app
(``python main.py``) as child processes, waits until the worker answers a ping and the app
accepts connections, checks ``GET /v1/user`` end to end, and prints curl commands to try.
Ctrl-C or SIGTERM stops both and exits 0: the app first (so no new task is sent), then the
worker with a warm shutdown (running tasks finish), each killed if it has not exited within
its timeout.

Without RabbitMQ (or with ``--embedded``) it says so in one line and runs the app alone in
the library's embedded mode: the tasks run in a worker thread of the app's process, users are
kept in SQLite. Everything works the same, the page at ``/`` included.

Each child runs in a session (process group) of its own, so a Ctrl-C in the terminal reaches
only this script, which stops the children in order; at the end their whole groups are
killed, so no pool process is left behind. On Linux the children also get SIGTERM if this
script dies without cleaning up (even with SIGKILL).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # ``backend`` lives next to this file
    sys.path.insert(0, str(HERE))

QUEUE = "payment_default1"
STARTUP_TIMEOUT = 60.0  # seconds for both children to become ready
APP_STOP_TIMEOUT = 10.0  # the app drops open connections after 5 s itself
WORKER_STOP_TIMEOUT = 20.0  # warm shutdown waits for running tasks (a report lasts <= 50 s)


@dataclass
class Child:
    """A child process, the leader of its own process group."""

    name: str
    proc: subprocess.Popen[bytes]
    stop_timeout: float

    def exited(self) -> int | None:
        return self.proc.poll()

    def signal_group(self, signum: int) -> None:
        """Signal every process in the child's group (the worker's pool included)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(name: str, argv: list[str], stop_timeout: float) -> Child:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(argv, cwd=HERE, env=env, start_new_session=True,
                            preexec_fn=_die_with_parent)
    return Child(name, proc, stop_timeout)


def stop_child(child: Child, hurry: threading.Event) -> None:
    """SIGTERM the child (the worker's warm shutdown), wait, then SIGKILL its whole group."""
    if child.exited() is None:
        say(f"stopping the {child.name} (pid {child.proc.pid})")
        child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + child.stop_timeout
        while child.exited() is None and time.monotonic() < deadline and not hurry.is_set():
            time.sleep(0.1)
        if child.exited() is None:
            say(f"the {child.name} did not stop in time: killing it")
    child.signal_group(signal.SIGKILL)  # whatever is left in its group, pool processes too
    child.proc.wait()


def wait_until(what: str, ready: Callable[[], bool], children: list[Child],
               stop: threading.Event, deadline: float) -> bool | None:
    """Poll ``ready`` until it holds (True), a child exits or time runs out (False),
    or a signal asks us to stop (None)."""
    while not stop.is_set():
        for child in children:
            status = child.exited()
            if status is not None:
                say(f"the {child.name} exited with status {status} while starting")
                return False
        if ready():
            return True
        if time.monotonic() > deadline:
            say(f"timed out waiting for {what}")
            return False
        stop.wait(0.25)
    return None


def port_open(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
        return True
    return False


def worker_answers(nodename: str) -> Callable[[], bool]:
    from backend.v1 import app  # the demo's own process only needs it for the ping

    def ping() -> bool:
        return bool(app.control.ping(destination=[nodename], timeout=0.5))
    return ping


def smoke_test(base: str) -> None:
    """One real round trip: HTTP -> producer -> RabbitMQ -> worker -> reply -> HTTP."""
    try:
        with urllib.request.urlopen(f"{base}/v1/user", timeout=15) as response:
            users = json.load(response)
        say(f"GET /v1/user answered {response.status} with {len(users)} user(s)")
    except (OSError, ValueError) as exc:  # URLError/HTTPError are OSErrors
        say(f"warning: GET /v1/user failed: {exc}")


def print_usage(base: str) -> None:
    form = "-H 'Content-Type: application/json'"
    print(f"""
Open {base}/ for a long job watched live, or try (the app logs nothing per request):
  curl {base}/v1/user
  curl -X POST -d name=alice -d email=alice@example.com {base}/v1/user
  curl -X POST {form} -d '{{"name": "bob"}}' {base}/v1/user
  curl '{base}/v1/user?name=alice'
  curl {base}/v1/user/1
  curl -X PUT -d email=alice@example.org {base}/v1/user/1
  curl -X DELETE {base}/v1/user/1
  curl {base}/v1/user/999                      # 500 with UserNotFound
  curl -X POST -d name=carol {base}/v1/async_user   # 202: fire and forget
  curl -X POST -d steps=5 -d delay=0.5 {base}/v1/report
  curl -X POST -d steps=5 -d delay=0.5 {base}/v1/async_report   # 202 + Location
  curl -N {base}/tasks/<task id>/events                          # its states, live
Ctrl-C stops it.
""", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``--port`` and ``--address`` (passed on to main.py), ``--embedded``, ``--broker``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8888, help="app port (default 8888)")
    parser.add_argument("--address", default="127.0.0.1", help="app address (default 127.0.0.1)")
    parser.add_argument("--embedded", action="store_true",
                        help="run the tasks inside the app's process, with no broker")
    parser.add_argument("--broker", metavar="URL",
                        help="the RabbitMQ broker URL (default: BROKER_URL, or localhost)")
    return parser.parse_args(argv)


def broker_answers(url: str) -> bool:
    """Whether anything accepts a TCP connection at the broker URL's host and port."""
    from kombu.utils.url import parse_url

    parts = parse_url(url.split(";")[0])
    return port_open(parts.get("hostname") or "localhost", int(parts.get("port") or 5672))


def main(argv: list[str] | None = None) -> int:
    """Start, supervise and stop both children; 0 after a requested stop, 1 on a failure."""
    args = parse_args(argv)
    stop, hurry = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            hurry.set()  # a second Ctrl-C: stop waiting for graceful exits
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    if args.broker:
        os.environ["BROKER_URL"] = args.broker  # the children read it
    broker = os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    embedded = args.embedded
    if not embedded and not broker_answers(broker):
        say("RabbitMQ does not answer; running embedded: tasks in the app's process, "
            "users in SQLite (start RabbitMQ, or pass --broker URL, for the real thing)")
        embedded = True
    nodename = f"demo-{os.getpid()}@{socket.gethostname()}"
    host = "127.0.0.1" if args.address in ("", "0.0.0.0") else args.address
    base = f"http://{host}:{args.port}"
    if port_open(host, args.port):  # else "ready" below could be someone else's server
        say(f"{host}:{args.port} is already in use; stop that server or pass --port")
        return 1
    children: list[Child] = []  # in stop order: the app first, then the worker
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        # The app first: it listens only once it has reached RabbitMQ, and exits at once
        # with a one-line hint if it cannot, so a stopped broker fails fast and clearly.
        children.append(spawn("app", [sys.executable, "main.py", "--port", str(args.port),
                                      "--address", args.address,
                                      *(["--embedded"] if embedded else [])],
                              APP_STOP_TIMEOUT))
        ready = wait_until(f"the app on {host}:{args.port}",
                           lambda: port_open(host, args.port), children, stop, deadline)
        if ready and not embedded:
            children.append(spawn("worker", [
                sys.executable, "-m", "celery", "-A", "backend.v1", "worker", "-Q", QUEUE,
                "--concurrency", "2", "-n", nodename, "--loglevel", "INFO"],
                WORKER_STOP_TIMEOUT))
            ready = wait_until(f"the worker {nodename}", worker_answers(nodename),
                               children, stop, deadline)
        if ready is None:
            return 0
        if not ready:
            return 1
        smoke_test(base)
        print_usage(base)
        while not stop.wait(0.5):
            for child in children:
                if (status := child.exited()) is not None:
                    say(f"the {child.name} exited unexpectedly with status {status}")
                    return 1
        return 0
    finally:
        for child in children:
            stop_child(child, hurry)
        if children:
            say("stopped")


if __name__ == "__main__":
    sys.exit(main())
