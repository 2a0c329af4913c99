"""Memory test: how much RSS one Tornado process needs per waiting request.

Run against two servers: ours (``bench/servers/ours_hold.py``: ``tcelery_routes`` on the task
``bench.hold``, which blocks until a Redis key exists) and the control (``tornado_hold.py``:
a bare Tornado handler awaiting an ``asyncio.Event``), whose figure is the floor any Tornado
handler pays. For each:

1. Warm up: hold and release a few hundred requests, so lazy imports, pools and free lists
   are in the baseline, not in the delta.
2. Baseline RSS.
3. Open N connections (asyncio raw sockets, in bursts) and send ``GET /hold`` on each; poll
   ``/pending`` until the server reports N parked requests (for ours: results the producer
   awaits, while the worker's two processes block in ``bench.hold`` and the rest queue).
4. Peak RSS over a 1 s plateau; ``(peak - baseline) / N`` is the RSS per waiting request.
5. Release (set the Redis key / ``GET /release``): every request must answer 200.

Every step is bounded in time; the runner raised its open-file limit to hold N sockets.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis

from bench.config import HOST, REDIS_URL
from bench.measure import rss_bytes

BURST = 250
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Target:
    """How to park requests on one server, and how to let them go."""

    name: str
    path: Callable[[str], str]
    release: Callable[[int, str], Awaitable[None]]


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=10) as resp:
        return json.load(resp)


def ours_target() -> Target:
    """``/hold?key=K`` runs ``bench.hold(key=K)``; setting K in Redis ends the tasks."""
    async def release(port: int, key: str) -> None:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            await asyncio.to_thread(client.set, key, 1, ex=600)
        finally:
            client.close()
    return Target("ours", lambda key: f"/hold?key={key}", release)


def floor_target() -> Target:
    """Plain Tornado: ``/hold`` awaits an event that ``/release`` sets."""
    async def release(port: int, key: str) -> None:
        await asyncio.to_thread(_get, port, "/release")
    return Target("tornado", lambda key: "/hold", release)


@dataclass
class MemoryResult:
    server: str
    requests: int
    waiting_reached: int = 0
    baseline_rss: int = 0
    holding_rss: int = 0
    rss_per_request: float = 0.0
    completed: int = 0
    ok_200: int = 0
    errors: int = 0
    connect_s: float = 0.0
    release_s: float = 0.0
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _request(port: int, path: str) -> Connection:
    """Connect and send one request; the response is read later."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def _status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    try:
        data = await reader.read()  # Connection: close -> the server closes after the body
        line = data.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) >= 2 else 0
    finally:
        writer.close()


async def _open(port: int, path: str, count: int) -> list[Connection]:
    connections: list[Connection] = []
    for start in range(0, count, BURST):
        burst = [_request(port, path) for _ in range(min(BURST, count - start))]
        connections += await asyncio.wait_for(asyncio.gather(*burst), 60)
    return connections


async def _wait_pending(port: int, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    pending = 0
    while time.monotonic() < deadline:
        pending = int((await asyncio.to_thread(_get, port, "/pending"))["pending"])
        if pending >= at_least:
            break
        await asyncio.sleep(0.2)
    return pending


async def _statuses(connections: list[Connection], timeout: float) -> list[int]:
    results = await asyncio.wait_for(
        asyncio.gather(*(_status(r, w) for r, w in connections), return_exceptions=True),
        timeout)
    return [r if isinstance(r, int) else 0 for r in results]


async def _cycle(port: int, target: Target, count: int, timeout: float) -> None:
    """Park ``count`` requests, release them, read the answers (the warm-up)."""
    key = f"bench:warm:{uuid.uuid4().hex}"
    connections = await _open(port, target.path(key), count)
    try:
        await _wait_pending(port, count, timeout)
    finally:
        await target.release(port, key)
    await _statuses(connections, timeout)


async def run(port: int, pid: int, requests: int, target: Target, *, warmup: int = 500,
              timeout: float = 180.0) -> MemoryResult:
    """The whole test against a hold server listening on ``port`` (process ``pid``)."""
    result = MemoryResult(server=target.name, requests=requests)
    key = f"bench:hold:{uuid.uuid4().hex}"
    connections: list[Connection] = []
    try:
        await _cycle(port, target, warmup, timeout=60)
        await asyncio.sleep(1.0)
        result.baseline_rss = rss_bytes(pid)

        started = time.monotonic()
        connections = await _open(port, target.path(key), requests)
        result.waiting_reached = await _wait_pending(port, requests, timeout=60)
        result.connect_s = round(time.monotonic() - started, 2)

        peak = 0
        for _ in range(10):  # a 1 s plateau: every request is parked, nothing moves
            peak = max(peak, rss_bytes(pid))
            await asyncio.sleep(0.1)
        result.holding_rss = peak
        result.rss_per_request = (peak - result.baseline_rss) / requests

        released = time.monotonic()
        await target.release(port, key)
        statuses = await _statuses(connections, timeout)
        result.release_s = round(time.monotonic() - released, 2)
        result.completed = sum(1 for s in statuses if s > 0)
        result.ok_200 = sum(1 for s in statuses if s == 200)
        result.errors = requests - result.ok_200
    except Exception as exc:  # reported, not raised: the other results are still worth writing
        result.error = f"{type(exc).__name__}: {exc!r}"
    finally:
        try:
            await target.release(port, key)  # never leave tasks blocked
        except Exception as exc:
            result.error = result.error or f"release failed: {exc!r}"
        for _, writer in connections:
            writer.close()
    return result
