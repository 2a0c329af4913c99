"""One Server-Sent Events writer, shared by every stream (a task's states, a group's).

A stream answers ``200 text/event-stream`` with ``Cache-Control: no-cache`` and
``X-Accel-Buffering: no`` (so nginx passes each event through), uncompressed whatever the
app's ``compress_response``. It starts with a ``retry:`` field, then writes one event per
item::

    id: 4
    event: PROGRESS
    data: {"task_id": ..., "state": "PROGRESS", ...}

with a ``:`` comment whenever nothing was sent for ``HEARTBEAT`` seconds (proxies drop idle
connections; a write is also how a vanished client is noticed). The stream closes after a
final event, or after the route's ``stream_timeout``. A client that disconnects frees
everything the stream held at once. Event ids keep counting from a reconnecting client's
``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

from tornado.iostream import StreamClosedError

from .. import metrics
from .base import JSONErrorsMixin
from .responses import encode

HEARTBEAT = 15.0
RETRY_MS = 3000
DEFAULT_STREAM_TIMEOUT = 3600.0

#: ``(event name, JSON data, final)`` for one item taken from a stream's queue.
Render = Callable[[Any], tuple[str, Any, bool]]


class EventStreamHandler(JSONErrorsMixin):
    """Base of the ``.../events`` handlers: ``await self.stream(first, queue, render)``."""

    stream_timeout: ClassVar[float] = DEFAULT_STREAM_TIMEOUT
    heartbeat: ClassVar[float] = HEARTBEAT
    head_runs_get: ClassVar[bool] = False

    def initialize(self) -> None:
        self._gone: asyncio.Future[None] | None = None

    def on_connection_close(self) -> None:
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    def last_event_id(self) -> int | None:
        """The ``Last-Event-ID`` a reconnecting EventSource sent, when it is one of ours."""
        value = self.request.headers.get("Last-Event-ID", "").strip()
        return int(value) if value.isdigit() and len(value) < 19 else None

    async def stream(self, first: Any, queue: asyncio.Queue[Any], render: Render) -> None:
        """Write ``first``, then every item of ``queue``, until a final one, the client
        leaving, or ``stream_timeout``."""
        loop = asyncio.get_running_loop()
        self._gone = loop.create_future()
        deadline = loop.time() + self.stream_timeout
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        self._transforms = []  # never gzip a stream (Tornado would compress text/*)
        seq = self.last_event_id() or 0
        item = first
        counted = metrics.METRICS  # the stream is counted open until this returns
        if counted is not None:
            counted.stream_opened()
        try:
            self.write(f"retry: {RETRY_MS}\n\n")
            while True:
                if item is not _NOTHING:
                    name, data, final = render(item)
                    seq += 1
                    self.write(b"id: %d\nevent: %s\ndata: %s\n\n"
                               % (seq, name.encode(), encode(data)))
                    if final:
                        break
                else:
                    self.write(": keep-alive\n\n")
                await self.flush()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                item = await self._next(queue, min(self.heartbeat, remaining))
                if self._gone.done():
                    return
            await self.flush()
            self.finish()
        except StreamClosedError:
            return  # the client went away mid-write
        finally:
            if counted is not None:
                counted.stream_closed()

    async def _next(self, queue: asyncio.Queue[Any], timeout: float) -> Any:
        if not queue.empty():
            return queue.get_nowait()
        assert self._gone is not None
        getter = asyncio.get_running_loop().create_task(queue.get())
        try:
            await asyncio.wait((getter, self._gone), timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        return _NOTHING


_NOTHING: Any = object()
