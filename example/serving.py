"""What the example's two Tornado apps share: connect, listen, serve until a signal, drain;
and their pages.

A broker that is down, a bad ``BROKER_URL`` or a busy port is one line on stderr and exit
status 1, never a traceback: this is the first thing a newcomer runs.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tornado.web

from tcelery_req_handler import BrokerUnavailable, ConfigurationError, Producer

#: How long shutdown lets requests that wait for a task finish before answering them 503.
SHUTDOWN_GRACE = 5.0


PAGES = Path(__file__).resolve().parent / "pages"


class PageHandler(tornado.web.RequestHandler):
    """Serves one HTML page of ``pages/``."""

    def initialize(self, page: str) -> None:
        self.page = page

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.write((PAGES / self.page).read_bytes())


def page_routes(page: str) -> list[Any]:
    """``/`` (the page) and ``/static/`` (its script), nothing fetched from another host."""
    return [(r"/", PageHandler, {"page": page}),
            (r"/static/(.*)", tornado.web.StaticFileHandler, {"path": str(PAGES)})]


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def broker_hint(where: str, error: BaseException) -> str:
    """One line: why the first connection failed, and what to do about it."""
    text = one_line(error)
    if "result backend" in text:
        return (f"cannot reach the result backend ({text}); start Redis with "
                "`redis-server --daemonize yes`, or set RESULT_BACKEND")
    if "ACCESS_REFUSED" in text or "AuthenticationError" in text:
        return f"RabbitMQ at {where} refused the login: check the user/password in BROKER_URL"
    if "vhost" in text and "not found" in text:
        return f"RabbitMQ at {where} has no such virtual host: check the path of BROKER_URL"
    reason = "nothing listens there" if "refused" in text.lower() else text
    return (f"cannot connect to RabbitMQ at {where} ({reason}); start it with "
            "`rabbitmq-server -detached`, or set BROKER_URL to a running broker")


def fail(script: str, message: str) -> int:
    print(f"{script}: {message}", file=sys.stderr, flush=True)
    return 1


async def drain(producer: Producer, grace: float) -> None:
    """Wait (at most ``grace`` seconds) until no request is waiting for a task's result."""
    deadline = asyncio.get_running_loop().time() + grace
    while producer.pending and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)


async def serve(script: str, make_producer: Callable[[], Producer],
                make_app: Callable[[], tornado.web.Application], port: int, address: str,
                path: str) -> int:
    """Connect the producer, serve ``make_app()`` until SIGINT/SIGTERM, shut down cleanly;
    the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    try:
        producer = make_producer()
    except ConfigurationError as exc:
        return fail(script, f"bad configuration: {one_line(exc)}")
    parameters = producer.parameters
    where = "embedded" if parameters is None else f"{parameters.host}:{parameters.port}"
    logging.disable(logging.WARNING)  # pika's and the producer's log lines say it 10 times
    try:
        await producer.connect()
    except BrokerUnavailable as exc:
        await producer.close()
        return fail(script, broker_hint(where, exc))
    finally:
        logging.disable(logging.NOTSET)

    try:
        # A burst of new connections overflows the default backlog of 128; dropped SYNs come
        # back a second later, which is most of the tail latency under load.
        server = make_app().listen(port, address, xheaders=False, backlog=1024)
    except OSError as exc:
        await producer.close()
        return fail(script, f"cannot listen on {address}:{port}: {exc.strerror or exc}")
    print(f"{script}: serving http://{address}:{port}{path} "
          f"({'embedded: tasks run in this process' if parameters is None else 'broker ' + where}"
          "); Ctrl-C to stop", flush=True)

    await stop.wait()
    server.stop()  # no new connections
    await drain(producer, SHUTDOWN_GRACE)  # waiting requests get their results...
    await producer.close()  # ...or, past the grace period, a 503
    await asyncio.sleep(0.1)  # let those last handlers write their responses
    await server.close_all_connections()  # idle keep-alive connections
    return 0


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "debug":
        # pika logs every failed socket as a stack of ERRORs; the producer's own warnings
        # ("connection lost; reconnecting") already say what matters.
        logging.getLogger("pika").setLevel(logging.CRITICAL)
