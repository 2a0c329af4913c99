"""A small asyncio HTTP/1.1 client for fault and load tests (``ab -n N -c C``, in-process).

Each of ``concurrency`` keep-alive connections sends requests one after another until the
shared count is reached or the time limit passes; every outcome is recorded, so a test can
assert on statuses, failures and latencies. A *failure* is what ``ab`` counts as failed: a
connection error, a malformed or truncated response, or no response within the timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float  # seconds from sending the request to the end of the response


@dataclass
class LoadReport:
    """What a load run saw."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    retry_after_missing: int = 0  # 503s without a Retry-After header
    wall: float = 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else 0.0

    def __str__(self) -> str:
        rate = self.requests / self.wall if self.wall else 0.0
        return (f"{self.requests} requests in {self.wall:.1f}s ({rate:.0f}/s), statuses "
                f"{dict(sorted(self.statuses.items()))}, {len(self.failures)} failed, "
                f"p50 {self.percentile(0.5) * 1000:.0f} ms, p99 "
                f"{self.percentile(0.99) * 1000:.0f} ms, max {self.percentile(1.0):.2f} s; "
                f"first failures: {self.failures[:3]}")


class HttpConnection:
    """One keep-alive HTTP/1.1 connection (reconnects when the server closes it)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None, timeout: float = 30.0) -> Response:
        started = time.monotonic()
        return await asyncio.wait_for(self._request(method, path, body, headers or {},
                                                    started), timeout)

    async def _request(self, method: str, path: str, body: bytes, headers: dict[str, str],
                       started: float) -> Response:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        try:
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("connection closed before a response")
            status = int(status_line.split(b" ", 2)[1])
            response_headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                response_headers[name.strip().lower()] = value.strip()
            length = int(response_headers.get("content-length", "0"))
            data = await reader.readexactly(length) if length else b""
        except BaseException:
            self.close()
            raise
        if response_headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, response_headers, data, time.monotonic() - started)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def run_load(host: str, port: int, path: Callable[..., str], *, total: int,
                   concurrency: int, time_limit: float, method: str = "GET",
                   timeout: float = 30.0) -> LoadReport:
    """``ab -n total -c concurrency`` over keep-alive connections, bounded by ``time_limit``
    (requests not started by then are not sent; the report says how many were)."""
    report = LoadReport()
    counter = iter(range(total))
    deadline = time.monotonic() + time_limit
    started = time.monotonic()

    async def client() -> None:
        conn = HttpConnection(host, port)
        try:
            for i in counter:
                if time.monotonic() > deadline:
                    return
                report.requests += 1
                try:
                    response = await conn.request(method, path(i=i), timeout=timeout)
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                        ValueError, IndexError) as exc:
                    report.failures.append(f"request {i}: {exc!r}")
                    continue
                report.statuses[response.status] += 1
                report.latencies.append(response.elapsed)
                if response.status == 503 and "retry-after" not in response.headers:
                    report.retry_after_missing += 1
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    report.wall = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.faults.http_load HOST PORT PATH_TEMPLATE -n N -c C``: a load run in
    its own process (as ``ab`` would be), so it does not share a core with the server under
    test. ``PATH_TEMPLATE`` may use ``{i}``, the request's number. Prints the report as JSON.
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("path")
    parser.add_argument("-n", "--total", type=int, required=True)
    parser.add_argument("-c", "--concurrency", type=int, required=True)
    parser.add_argument("-t", "--time-limit", type=float, default=120.0)
    parser.add_argument("-m", "--method", default="GET")
    parser.add_argument("--timeout", type=float, default=30.0)
    ns = parser.parse_args(argv)
    report = asyncio.run(run_load(ns.host, ns.port, ns.path.format, total=ns.total,
                                  concurrency=ns.concurrency, time_limit=ns.time_limit,
                                  method=ns.method, timeout=ns.timeout))
    print(json.dumps({
        "requests": report.requests, "statuses": {str(k): v for k, v in report.statuses.items()},
        "failures": report.failures[:20], "failed": len(report.failures),
        "retry_after_missing": report.retry_after_missing, "wall": report.wall,
        "p50": report.percentile(0.5), "p99": report.percentile(0.99),
        "max": report.percentile(1.0), "summary": str(report)}))


if __name__ == "__main__":
    main()
