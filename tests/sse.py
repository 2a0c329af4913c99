"""A small, strict Server-Sent Events client over a raw asyncio socket, for the tests.

It speaks just enough HTTP/1.1 (one GET, a chunked or length-delimited or close-delimited
body) and parses the event stream as the WHATWG spec says: lines end in CRLF, LF or CR
(also split across reads), ``:`` starts a comment, ``field: value`` loses one leading space,
``data`` lines join with ``\\n``, a blank line dispatches an event (none when it has no data),
``id`` sets the last event id, ``retry`` takes digits only. Comments are kept, so that the
tests can see the server's keep-alives.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    type: str
    data: str
    id: str | None

    def json(self) -> Any:
        import json

        return json.loads(self.data)


class SSEParser:
    """Feed it bytes; it returns the events completed by them."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""
        self._data: list[str] = []
        self._type = ""
        self.last_id: str | None = None
        self.retry: int | None = None
        self.comments: list[str] = []

    def feed(self, chunk: bytes, final: bool = False) -> list[Event]:
        self._buffer += self._decoder.decode(chunk, final)
        events: list[Event] = []
        while True:
            cut = _line_end(self._buffer, final)
            if cut is None:
                break
            line, size = cut
            self._buffer = self._buffer[len(line) + size:]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> Event | None:
        if line == "":
            data, self._data = self._data, []
            kind, self._type = self._type or "message", ""
            if not data:
                return None
            return Event(kind, "\n".join(data), self.last_id)
        if line.startswith(":"):
            self.comments.append(line[1:].lstrip(" "))
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None


def _line_end(buffer: str, final: bool) -> tuple[str, int] | None:
    """The first complete line of ``buffer`` and the length of its terminator."""
    for i, char in enumerate(buffer):
        if char == "\n":
            return buffer[:i], 1
        if char == "\r":
            if i + 1 < len(buffer):
                return buffer[:i], 2 if buffer[i + 1] == "\n" else 1
            if final:
                return buffer[:i], 1
            return None  # a CR at the end: the LF of a CRLF may be in the next read
    return None


class SSEClient:
    """One ``GET`` of an event stream. ``await SSEClient.open(port, path)``, then
    ``await next_event(timeout)`` until it returns None (the server ended the stream)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.parser = SSEParser()
        self.events: list[Event] = []
        self.body = b""  # the whole body, when it is not an event stream
        self.ended = False  # the server finished the response (last chunk / EOF)
        self._pending: list[Event] = []
        self._remaining: int | None = None  # Content-Length left, when delimited that way
        self._chunked = False

    @classmethod
    async def open(cls, port: int, path: str, headers: dict[str, str] | None = None,
                   timeout: float = 10.0) -> SSEClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout)
        client = cls(reader, writer)
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
                 "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        await asyncio.wait_for(client._read_head(), timeout)
        if not client.headers.get("content-type", "").startswith("text/event-stream"):
            await asyncio.wait_for(client._read_all(), timeout)
        return client

    async def _read_head(self) -> None:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, code, *_ = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        self.status = int(code)
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
        self._chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        if not self._chunked and "content-length" in self.headers:
            self._remaining = int(self.headers["content-length"])
        if self.status in (204, 304):
            self._remaining = 0

    async def _read_body_part(self) -> bytes | None:
        """The next piece of the body, or None once it ended."""
        if self.ended:
            return None
        if self._chunked:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                self.ended = True
                return None
            data = await self.reader.readexactly(size)
            assert await self.reader.readexactly(2) == b"\r\n", "bad chunk framing"
            return data
        if self._remaining is not None:
            if self._remaining == 0:
                self.ended = True
                return None
            data = await self.reader.read(min(self._remaining, 65536))
            if not data:
                raise ConnectionError("connection closed inside a Content-Length body")
            self._remaining -= len(data)
            return data
        data = await self.reader.read(65536)
        if not data:
            self.ended = True
            return None
        return data

    async def _read_all(self) -> None:
        while (part := await self._read_body_part()) is not None:
            self.body += part

    async def next_event(self, timeout: float) -> Event | None:
        """The next event; None when the stream ended; TimeoutError after ``timeout``."""
        async def read() -> Event | None:
            while not self._pending:
                part = await self._read_body_part()
                if part is None:
                    self._pending.extend(self.parser.feed(b"", final=True))
                    if not self._pending:
                        return None
                    break
                self._pending.extend(self.parser.feed(part))
            event = self._pending.pop(0)
            self.events.append(event)
            return event

        return await asyncio.wait_for(read(), timeout)

    async def read_to_end(self, timeout: float, limit: int = 1000) -> list[Event]:
        """Every event up to the end of the stream, all within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for _ in range(limit):
            if await self.next_event(max(deadline - loop.time(), 0.001)) is None:
                return self.events
        raise AssertionError(f"more than {limit} events")

    async def at_eof(self, timeout: float) -> bool:
        """True when the server closes the connection within ``timeout`` (after the body)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout) == b""
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Hang up abruptly, as a browser tab being closed does."""
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)
