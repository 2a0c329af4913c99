"""What the benchmark's own servers share: command line, JSON bytes, listening."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer

from bench.config import HOST


def parse_args(description: str, argv: Sequence[str] | None = None,
               extra: Sequence[tuple[str, dict[str, Any]]] = ()) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    for flag, options in extra:
        parser.add_argument(flag, **options)
    return parser.parse_args(argv)


async def serve(app: tornado.web.Application, port: int, *, backlog: int = 1024) -> None:
    """Listen on loopback and run until the process is terminated.

    Every server of the benchmark listens as the example does (backlog 1024, no xheaders, no
    compression), so none gets a setting the others lack; only Flower keeps its own defaults.
    """
    server = HTTPServer(app)
    server.listen(port, HOST, backlog=backlog)
    await asyncio.Event().wait()


async def serve_until_terminated(app: tornado.web.Application, port: int, *,
                                 backlog: int = 1024) -> None:
    """:func:`serve`, returning on SIGTERM / SIGINT (after closing the listener), so the
    caller can close its producer: that deletes its reply queue on the broker instead of
    leaving it to ``x-expires``."""
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = HTTPServer(app)
    server.listen(port, HOST, backlog=backlog)
    await stop.wait()
    server.stop()
