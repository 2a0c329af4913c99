"""The example's Tornado application: HTTP routes whose requests are run by Celery tasks.

From ``example/``, with RabbitMQ running::

    celery -A backend.v1 worker -Q payment_default1 --concurrency 2   # one terminal
    python main.py [--port 8888] [--address 127.0.0.1]                # another

(or ``python demo.py`` for both). Routes, backed by :mod:`backend.v1.tasks`:

* ``/v1/user``: GET lists (``?name=`` filters), POST creates (``name``, ``email``);
* ``/v1/user/<id>``: GET, PUT (``name`` and/or ``email``), DELETE;
* ``/v1/async_user`` and ``/v1/async_user/<id>``: the same, fire and forget (202 + task ids);
* ``/v1/report``: POST runs a slow task (``steps``, ``delay``), waiting up to 60 s.

``make_app()`` builds the application only: whoever serves it sets up the producer, either
process-wide (``setup_nonblocking_producer(backend.v1.app)``, as :func:`main` does) or
passed in (``make_app(producer=Producer(backend.v1.app))``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

# ``backend`` lives next to this file: make it importable when main.py is imported from
# elsewhere (tests, the benchmark runner), not only when run as ``python main.py`` here.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import backend.v1  # noqa: E402
import tornado.web  # noqa: E402
from backend.v1 import tasks  # noqa: E402

from tcelery_req_handler import (  # noqa: E402
    BrokerUnavailable,
    ConfigurationError,
    Producer,
    TCeleryNotFoundHandler,
    routes,
    setup_nonblocking_producer,
    tcelery_async_routes,
    tcelery_routes,
)

#: How long shutdown lets requests that wait for a task finish before answering them 503.
SHUTDOWN_GRACE = 5.0


def make_app(producer: Producer | None = None, **settings: Any) -> tornado.web.Application:
    """The example's routes in a Tornado application.

    ``producer``: the one the routes publish with; by default the process-wide producer of
    ``setup_nonblocking_producer``. ``settings`` pass through to Tornado.
    """
    settings.setdefault("compress_response", False)
    settings.setdefault("default_handler_class", TCeleryNotFoundHandler)
    # The tasks' client errors are the client's fault: say so with 404/400, not 500.
    client_errors = {"UserNotFound": 404, "ValueError": 400}
    return tornado.web.Application(routes(
        tcelery_routes(r"/v1/user", get_tasks=[tasks.list_users],
                       post_tasks=[tasks.create_user], producer=producer,
                       error_statuses=client_errors),
        tcelery_routes(r"/v1/user/(?P<user_id>[^/]+)", get_tasks=[tasks.get_user],
                       put_tasks=[tasks.update_user], delete_tasks=[tasks.delete_user],
                       producer=producer, error_statuses=client_errors),
        tcelery_async_routes(r"/v1/async_user", get_tasks=[tasks.list_users],
                             post_tasks=[tasks.create_user], producer=producer),
        tcelery_async_routes(r"/v1/async_user/(?P<user_id>[^/]+)",
                             get_tasks=[tasks.get_user], put_tasks=[tasks.update_user],
                             delete_tasks=[tasks.delete_user], producer=producer),
        tcelery_routes(r"/v1/report", post_tasks=[tasks.report], timeout=60,
                       producer=producer, error_statuses=client_errors),
    ), **settings)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def broker_hint(where: str, error: BaseException) -> str:
    """One line: why the first connection to RabbitMQ failed, and what to do about it."""
    text = _one_line(error)
    if "ACCESS_REFUSED" in text or "AuthenticationError" in text:
        return f"RabbitMQ at {where} refused the login: check the user/password in BROKER_URL"
    if "vhost" in text and "not found" in text:
        return f"RabbitMQ at {where} has no such virtual host: check the path of BROKER_URL"
    reason = "nothing listens there" if "refused" in text.lower() else text
    return (f"cannot connect to RabbitMQ at {where} ({reason}); start it with "
            "`rabbitmq-server -detached`, or set BROKER_URL to a running broker")


def _fail(message: str) -> int:
    print(f"main.py: {message}", file=sys.stderr, flush=True)
    return 1


async def main(port: int = 8888, address: str = "127.0.0.1") -> int:
    """Connect to RabbitMQ, serve until SIGINT/SIGTERM, then shut down; the exit status.

    A broker that is down, a bad ``BROKER_URL`` or a busy port is one line on stderr and
    status 1, never a traceback: this is the first thing a newcomer runs.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    try:
        producer = setup_nonblocking_producer(backend.v1.app)
    except ConfigurationError as exc:
        return _fail(f"bad broker configuration: {_one_line(exc)}")
    where = f"{producer.parameters.host}:{producer.parameters.port}"
    logging.disable(logging.WARNING)  # pika's and the producer's log lines say it 10 times
    try:
        await producer.connect()
    except BrokerUnavailable as exc:
        await producer.close()
        return _fail(broker_hint(where, exc))
    finally:
        logging.disable(logging.NOTSET)

    try:
        # A burst of new connections overflows the default backlog of 128; dropped SYNs come
        # back a second later, which is most of the tail latency under load.
        server = make_app().listen(port, address, xheaders=False, backlog=1024)
    except OSError as exc:
        await producer.close()
        return _fail(f"cannot listen on {address}:{port}: {exc.strerror or exc}")
    print(f"main.py: serving http://{address}:{port}/v1/user (broker {where}); "
          "Ctrl-C to stop", flush=True)

    await stop.wait()
    server.stop()  # no new connections
    await drain(producer, SHUTDOWN_GRACE)  # waiting requests get their results...
    await producer.close()  # ...or, past the grace period, a 503
    await asyncio.sleep(0.1)  # let those last handlers write their responses
    await server.close_all_connections()  # idle keep-alive connections
    return 0


async def drain(producer: Producer, grace: float) -> None:
    """Wait (at most ``grace`` seconds) until no request is waiting for a task's result."""
    deadline = asyncio.get_running_loop().time() + grace
    while producer.pending and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``--port``, ``--address`` and ``--log-level``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8888, help="TCP port (default 8888)")
    parser.add_argument("--address", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1)")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"],
                        help="'info' adds one access-log line per request (default warning)")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    """The command line: parse ``argv``, configure logging, serve; the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":
        # pika logs every failed socket as a stack of ERRORs; the producer's own warnings
        # ("connection lost; reconnecting") already say what matters.
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    return asyncio.run(main(args.port, args.address))


if __name__ == "__main__":
    sys.exit(run())
