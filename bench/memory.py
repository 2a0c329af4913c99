"""Memory test: how much RSS one of our Tornado processes needs per waiting request.

1. Warm up: a few hundred ``/hold`` requests on a key that is already set (tasks return at
   once), so lazy imports, pools and caches are in the baseline, not in the delta.
2. Baseline RSS.
3. Open N connections (asyncio raw sockets, in bursts) and send ``GET /hold?key=K`` on each,
   with K not set: the worker's two processes block in ``bench.hold`` and the rest of the
   tasks queue, so all N requests wait. Poll ``/pending`` until the producer awaits N results.
4. Peak RSS over a short plateau; ``(peak - baseline) / N`` is the RSS per waiting request.
5. Set K in Redis: the tasks return, every request must complete with 200.

Every step is bounded in time; the client raises its open-file limit to hold N sockets.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import redis

from bench.config import HOST, REDIS_URL
from bench.measure import rss_bytes

BURST = 250


@dataclass
class MemoryResult:
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


async def _request(port: int, key: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect and send one ``/hold`` request; the response is read later."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET /hold?key={key} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def _response_status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    try:
        data = await reader.read()  # Connection: close -> the server closes after the body
        line = data.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) >= 2 else 0
    finally:
        writer.close()


def _pending(port: int) -> int:
    with urllib.request.urlopen(f"http://{HOST}:{port}/pending", timeout=5) as resp:
        return int(json.load(resp)["pending"])


async def _wait_pending(port: int, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    pending = 0
    while time.monotonic() < deadline:
        pending = await asyncio.to_thread(_pending, port)
        if pending >= at_least:
            break
        await asyncio.sleep(0.2)
    return pending


async def _batch(port: int, key: str, count: int, timeout: float) -> list[int]:
    """Send ``count`` requests at once on a key already set; their statuses."""
    async def one() -> int:
        reader, writer = await _request(port, key)
        return await _response_status(reader, writer)
    return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), timeout)


async def run(port: int, pid: int, requests: int, *, warmup: int = 500,
              timeout: float = 180.0) -> MemoryResult:
    """The whole test against the ours_hold server listening on ``port`` (process ``pid``)."""
    result = MemoryResult(requests=requests)
    client = redis.Redis.from_url(REDIS_URL)
    warm_key, hold_key = f"bench:warm:{uuid.uuid4().hex}", f"bench:hold:{uuid.uuid4().hex}"
    client.set(warm_key, 1, ex=600)
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await _batch(port, warm_key, warmup, timeout=60)
        await asyncio.sleep(1.0)
        result.baseline_rss = rss_bytes(pid)

        started = time.monotonic()
        for start in range(0, requests, BURST):
            burst = [_request(port, hold_key)
                     for _ in range(min(BURST, requests - start))]
            connections += await asyncio.wait_for(asyncio.gather(*burst), 60)
        result.waiting_reached = await _wait_pending(port, requests, timeout=60)
        result.connect_s = round(time.monotonic() - started, 2)

        peak = 0
        for _ in range(10):  # a 1 s plateau: every request is parked, nothing moves
            peak = max(peak, rss_bytes(pid))
            await asyncio.sleep(0.1)
        result.holding_rss = peak
        result.rss_per_request = (peak - result.baseline_rss) / requests

        released = time.monotonic()
        client.set(hold_key, 1, ex=600)
        statuses = await asyncio.wait_for(
            asyncio.gather(*(_response_status(r, w) for r, w in connections),
                           return_exceptions=True), timeout)
        result.release_s = round(time.monotonic() - released, 2)
        result.completed = sum(1 for s in statuses if isinstance(s, int) and s > 0)
        result.ok_200 = sum(1 for s in statuses if s == 200)
        result.errors = requests - result.ok_200
    except Exception as exc:  # reported, not raised: the other results are still worth writing
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        client.set(hold_key, 1, ex=600)  # never leave tasks blocked
        for _, writer in connections:
            writer.close()
        client.close()
    return result
