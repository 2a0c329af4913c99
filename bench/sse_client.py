"""The event-stream test's client: ``python -m bench.sse_client``, a process of its own.

Opens ``--per-task`` Server-Sent-Events streams (``GET /tasks/<id>/events``, HTTP/1.1, raw
asyncio sockets, loopback only) for each task id of ``--ids-file``, in bursts of 250
connections. Once every stream has received its first event (the task's current state,
PENDING: no task is sent yet) it writes ``--ready-file``; the runner then measures the
server's RSS and sends the tasks. Every event of every stream is counted; for PROGRESS and
SUCCESS events the delay from the worker's ``time.time()`` in the event (``progress.t`` /
``result.t``) to the moment the client read it is recorded. A stream ends when the server
closes it after the final state. Everything is bounded by ``--timeout``; the summary goes to
``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import stats
from bench.config import HOST

BURST = 250
FINAL = (b"SUCCESS", b"FAILURE", b"REVOKED")


@dataclass
class Totals:
    streams: int
    connected: int = 0
    connect_errors: int = 0
    non_200: int = 0
    first_events: int = 0
    completed: int = 0      # received a final state and the end of the response
    events: int = 0
    keepalives: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    per_stream: dict[int, int] = field(default_factory=dict)  # events received -> streams
    delays_ms: list[float] = field(default_factory=list)
    ready_at: float = 0.0

    def note(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(message[:300])


async def _chunks(reader: asyncio.StreamReader, chunked: bool) -> Any:
    """The body's bytes as they arrive (decoding chunked transfer encoding)."""
    while True:
        if not chunked:
            data = await reader.read(65536)
            if not data:
                return
            yield data
            continue
        line = await reader.readline()
        if not line:
            return
        size = int(line.strip().split(b";")[0] or b"0", 16)
        if size == 0:
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


class Stream:
    def __init__(self, port: int, task_id: str, totals: Totals, ready: asyncio.Event) -> None:
        self.port, self.task_id, self.totals, self.ready = port, task_id, totals, ready
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.events = 0

    async def open(self) -> None:
        try:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
            self.writer.write(f"GET /tasks/{self.task_id}/events HTTP/1.1\r\n"
                              f"Host: {HOST}:{self.port}\r\nAccept: text/event-stream\r\n"
                              "Cache-Control: no-cache\r\n\r\n".encode())
            await self.writer.drain()
            self.totals.connected += 1
        except OSError as exc:
            self.totals.connect_errors += 1
            self.totals.note(f"connect: {exc!r}")
            self._first()  # never counts as open, but must not block readiness

    def _first(self) -> None:
        t = self.totals
        t.first_events += 1
        if t.first_events >= t.streams and not self.ready.is_set():
            t.ready_at = time.time()
            self.ready.set()

    async def read(self) -> None:
        if self.reader is None:
            return
        final = False
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status != 200:
                self.totals.non_200 += 1
                self.totals.note(f"status {status}: {head[:200]!r}")
                self._first()
                return
            chunked = b"transfer-encoding: chunked" in head.lower()
            buffer = b""
            async for data in _chunks(self.reader, chunked):
                received = time.time()
                buffer += data
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    final = self._event(block, received) or final
            if final:
                self.totals.completed += 1
            else:
                self.totals.note(f"stream of {self.task_id} ended without a final state")
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.totals.note(f"{self.task_id}: {exc!r}")
            if not self.events:
                self._first()
        finally:
            self.totals.per_stream[self.events] = self.totals.per_stream.get(self.events, 0) + 1
            if self.writer is not None:
                self.writer.close()

    def _event(self, block: bytes, received: float) -> bool:
        name = data = None
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip()
            elif line.startswith(b"data:"):
                data = line[5:].strip()
            elif line.startswith(b":"):
                self.totals.keepalives += 1
        if name is None:
            return False  # the retry: field, or a keep-alive comment
        self.events += 1
        self.totals.events += 1
        if self.events == 1:
            self._first()
        if data is not None and name in (b"PROGRESS", b"SUCCESS"):
            body = json.loads(data)
            meta = body.get("progress") if name == b"PROGRESS" else body.get("result")
            if isinstance(meta, dict) and "t" in meta:
                self.totals.delays_ms.append((received - float(meta["t"])) * 1000)
        return name in FINAL


async def run(port: int, ids: list[str], per_task: int, ready_file: Path,
              timeout: float) -> dict[str, Any]:
    totals = Totals(streams=len(ids) * per_task)
    ready = asyncio.Event()
    streams = [Stream(port, task_id, totals, ready) for task_id in ids for _ in range(per_task)]
    started = time.monotonic()
    readers: list[asyncio.Task[None]] = []
    deadline = started + timeout
    try:
        for start in range(0, len(streams), BURST):
            burst = streams[start:start + BURST]
            await asyncio.wait_for(asyncio.gather(*(s.open() for s in burst)),
                                   max(1.0, deadline - time.monotonic()))
            readers += [asyncio.create_task(s.read()) for s in burst]
        await asyncio.wait_for(ready.wait(), max(1.0, deadline - time.monotonic()))
        connect_s = round(time.monotonic() - started, 2)
        ready_file.write_text(json.dumps({"t": totals.ready_at, "connect_s": connect_s}))
        _, pending = await asyncio.wait(readers,
                                        timeout=max(1.0, deadline - time.monotonic()))
        for task in pending:
            task.cancel()
        if pending:
            totals.note(f"{len(pending)} streams still open at the {timeout:g} s limit")
    except TimeoutError:
        totals.note(f"not ready within {timeout:g} s: {totals.first_events} first events of "
                    f"{totals.streams}")
        connect_s = round(time.monotonic() - started, 2)
    finally:
        for s in streams:
            if s.writer is not None:
                s.writer.close()
    out = {k: v for k, v in totals.__dict__.items() if k not in ("delays_ms", "per_stream")}
    out["per_stream"] = {str(k): v for k, v in sorted(totals.per_stream.items())}
    out["delay_ms"] = stats.summary(totals.delays_ms)
    out["delays_counted"] = len(totals.delays_ms)
    out["connect_s"] = connect_s
    out["duration_s"] = round(time.monotonic() - started, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ids-file", type=Path, required=True)
    parser.add_argument("--per-task", type=int, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ids = args.ids_file.read_text().split()
    result = asyncio.run(run(args.port, ids, args.per_task, args.ready_file, args.timeout))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
