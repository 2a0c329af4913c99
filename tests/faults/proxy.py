"""A TCP proxy that a test controls, to break the network between the producer and RabbitMQ.

It runs its own asyncio loop in a daemon thread, so it works the same from sync fixtures, from
any test's event loop, and across tests. Its control methods are synchronous and return once
the fault is in effect.

Faults:

* ``cut("refuse")``: reset every open connection and stop listening, so new connections are
  refused at once (a broker host that is up but has no RabbitMQ);
* ``cut("blackhole")``: reset every open connection; new connections are accepted but nothing
  is forwarded until ``restore()``, when they are connected upstream as if the SYN had finally
  got through (a routing black hole);
* ``freeze()``: keep every connection open but forward no byte in either direction, and hold new
  ones, until ``restore()`` (a silent partition: no FIN, no RST; only timeouts notice).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, Literal

CutMode = Literal["refuse", "blackhole"]

_CHUNK = 256 * 1024


class _Link:
    """One client connection and, once forwarded, its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        """Drop both sides abruptly: RST, not FIN, like a connection torn down by the network."""
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream_host:upstream_port`` until told otherwise."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = port
        self.accepted = 0  # connections accepted since start (reconnects show up here)
        self._state: Literal["up", "refuse", "blackhole", "frozen"] = "up"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing: asyncio.Event | None = None  # set while bytes may pass

    # -- control (call from any thread) ---------------------------------------------------
    def start(self) -> TcpProxy:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=f"tcp-proxy-{id(self)}",
                                        daemon=True)
        self._thread.start()
        self._call(self._start())
        return self

    def url(self, vhost: str = "/", user: str = "guest", password: str = "guest") -> str:
        """An ``amqp://`` URL that goes through this proxy (``//`` is the default vhost)."""
        path = "/" if vhost == "/" else vhost
        return f"amqp://{user}:{password}@{self.host}:{self.port}/{path}"

    @property
    def active(self) -> int:
        """Connections currently held open by the proxy."""
        return len(self._links)

    @property
    def state(self) -> str:
        return self._state

    def cut(self, mode: CutMode = "refuse") -> None:
        """Reset every connection; refuse or black-hole new ones until ``restore()``."""
        self._call(self._cut(mode))

    def freeze(self) -> None:
        """Stop forwarding bytes on every connection, without closing any, until ``restore()``."""
        self._call(self._freeze())

    def restore(self) -> None:
        """Forward again; connections held during a black hole or freeze go through now."""
        self._call(self._restore())

    @contextlib.contextmanager
    def down(self, mode: CutMode = "refuse") -> Iterator[None]:
        """``with proxy.down(): ...`` cuts on entry and always restores on exit."""
        self.cut(mode)
        try:
            yield
        finally:
            self.restore()

    def stop(self) -> None:
        """Close everything and end the proxy's thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None, "proxy not started"
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- inside the proxy's loop ----------------------------------------------------------
    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port,
                                                  reuse_address=True, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            # wait_closed() would wait for the handlers too; closing the socket is enough.

    async def _cut(self, mode: CutMode) -> None:
        assert self._flowing is not None
        self._state = mode
        self._flowing.clear()
        if mode == "refuse":
            await self._close_server()
        elif self._server is None:
            await self._listen()
        self._reset_all()

    async def _freeze(self) -> None:
        assert self._flowing is not None
        self._state = "frozen"
        self._flowing.clear()
        if self._server is None:
            await self._listen()

    async def _restore(self) -> None:
        assert self._flowing is not None
        if self._server is None:
            await self._listen()
        self._state = "up"
        self._flowing.set()

    async def _shutdown(self) -> None:
        await self._close_server()
        self._reset_all()

    def _reset_all(self) -> None:
        links, self._links = self._links, set()
        for link in links:
            link.reset()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self.accepted += 1
        if self._state == "refuse":  # raced with a cut: behave as if refused
            _Link(writer).reset()
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._flowing.wait()  # held while black-holed or frozen
            if link not in self._links:
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except (OSError, asyncio.CancelledError):
            link.reset()
            self._links.discard(link)
            return
        link.upstream = up_writer
        link.tasks = [asyncio.create_task(self._pipe(reader, up_writer, link)),
                      asyncio.create_task(self._pipe(up_reader, writer, link))]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    link: _Link) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if not self._flowing.is_set():
                    await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            # one side ended: end the other, and forget the pair
            if link in self._links:
                self._links.discard(link)
                for w in (link.client, link.upstream):
                    if w is not None:
                        w.close()
