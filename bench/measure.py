"""Resource use of the processes under test: CPU time and peak RSS, read with psutil.

CPU per request is ``(user + system CPU seconds after - before) / completed requests`` of the
web process, and separately of the worker's whole process tree (parent plus pool children)
and of the brokers (RabbitMQ, plus Redis for Flower's results). On two cores their sum is
what bounds req/s, so the report can show where a request's CPU goes. Peak RSS is sampled
every 50 ms by a background thread.
"""

from __future__ import annotations

import contextlib
import resource
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]


def cpu_seconds(pid: int, *, tree: bool = False) -> float:
    """User + system CPU seconds of ``pid`` (plus its live descendants when ``tree``)."""
    procs = [psutil.Process(pid)]
    if tree:
        procs += procs[0].children(recursive=True)
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` (RabbitMQ's 5672), if visible."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    return None


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent not idle since boot (steal counts as busy: a core
    another VM holds is a core the benchmark does not get)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0)
                 - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0))


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished, waited-for children (ab runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class OtherLoad:
    """How much of the machine something *outside* the benchmark used during an interval.

    ``(all cores' busy time - web - worker - broker - ab) / (wall time x cores)``, in %.
    On a shared machine this is the noise figure: a run with high other load is slower for
    reasons that have nothing to do with the server under test.
    """

    def __init__(self) -> None:
        self._busy0 = machine_busy_seconds()
        self._children0 = children_cpu_seconds()
        self._t0 = time.monotonic()

    def percent(self, ours_cpu_s: float) -> float:
        busy = machine_busy_seconds() - self._busy0
        ab_cpu = children_cpu_seconds() - self._children0
        wall = time.monotonic() - self._t0
        cores = psutil.cpu_count() or 1
        other = max(0.0, busy - ours_cpu_s - ab_cpu)
        return round(100 * other / (wall * cores), 1) if wall > 0 else 0.0


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped because a listen queue was full
    (``TcpExt: ListenOverflows``, all sockets of this network namespace).

    At ``-c 500`` against Tornado's default backlog of 128 (Flower's) these drops are what turns a
    p50 of tens of ms into a p99 above one second (the client's SYN is retried after 1 s).
    """
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        if header.startswith("TcpExt:"):
            fields = dict(zip(header.split()[1:], values.split()[1:], strict=False))
            value = fields.get("ListenOverflows")
            return int(value) if value is not None else None
    return None


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


class RssSampler:
    """Samples a process's RSS in a thread; ``peak`` is the highest value seen."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except psutil.Error:
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(2)
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, rss_bytes(self.pid))


@dataclass
class Usage:
    """CPU seconds spent by the web process and by the worker tree over one interval."""

    web_cpu_s: float
    worker_cpu_s: float
    broker_cpu_s: float | None


class UsageMeter:
    """Snapshot CPU of the web process, the worker tree and the brokers (RabbitMQ, and Redis
    which Flower's results go through); diff later."""

    def __init__(self, web_pid: int, worker_pid: int | None,
                 broker_pids: Sequence[int | None] = ()) -> None:
        self.web_pid, self.worker_pid = web_pid, worker_pid
        self.broker_pids = [pid for pid in broker_pids if pid]
        self._web0 = cpu_seconds(web_pid)
        self._worker0 = cpu_seconds(worker_pid, tree=True) if worker_pid else 0.0
        self._broker0 = self._broker_now()

    def _broker_now(self) -> float | None:
        if not self.broker_pids:
            return None
        try:
            return sum(cpu_seconds(pid) for pid in self.broker_pids)
        except psutil.Error:
            return None

    def web(self) -> float:
        return cpu_seconds(self.web_pid) - self._web0

    def worker(self) -> float:
        if not self.worker_pid:
            return 0.0
        return cpu_seconds(self.worker_pid, tree=True) - self._worker0

    def broker(self) -> float | None:
        now = self._broker_now()
        if now is None or self._broker0 is None:
            return None
        return now - self._broker0

    def stop(self) -> Usage:
        return Usage(web_cpu_s=self.web(), worker_cpu_s=self.worker(),
                     broker_cpu_s=self.broker())


def _tree_cpu_seconds(extra_pids: Sequence[int | None]) -> float:
    """CPU seconds of this process, its live descendants, its reaped children, and
    ``extra_pids`` (RabbitMQ, Redis)."""
    me = psutil.Process()
    times0 = me.cpu_times()
    total = float(times0.user + times0.system) + children_cpu_seconds()
    for proc in [*me.children(recursive=True),
                 *(psutil.Process(pid) for pid in extra_pids if pid)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


class TreeLoad:
    """:class:`OtherLoad` for the measurements without ``ab``: the share of the machine used
    by processes *outside* the runner's tree (the runner, every child and grandchild, reaped
    ones included) and the brokers, over an interval, in %. The noise figure."""

    def __init__(self, broker_pids: Sequence[int | None] = ()) -> None:
        self._brokers = list(broker_pids)
        self._busy0 = machine_busy_seconds()
        self._ours0 = _tree_cpu_seconds(self._brokers)
        self._t0 = time.monotonic()

    def percent(self) -> float:
        busy = machine_busy_seconds() - self._busy0
        ours = _tree_cpu_seconds(self._brokers) - self._ours0
        wall = time.monotonic() - self._t0
        cores = psutil.cpu_count() or 1
        return round(100 * max(0.0, busy - ours) / (wall * cores), 1) if wall > 0 else 0.0
