"""The example's Tornado application: HTTP routes whose requests are run by Celery tasks.

From ``example/``, with RabbitMQ running::

    celery -A backend.v1 worker -Q payment_default1 --concurrency 2   # one terminal
    python main.py [--port 8888] [--address 127.0.0.1]                # another

(or ``python demo.py`` for both). Routes, backed by :mod:`backend.v1.tasks`:

* ``/v1/user``: GET lists (``?name=`` filters), POST creates (``name``, ``email``);
* ``/v1/user/<id>``: GET, PUT (``name`` and/or ``email``), DELETE;
* ``/v1/async_user`` and ``/v1/async_user/<id>``: the same, fire and forget (202 + task ids);
* ``/v1/report``: POST runs a slow task (``steps``, ``delay``), waiting up to 60 s;
  ``/v1/async_report`` sends it and answers 202 with its status URL;
* ``/tasks/<id>``, ``/tasks/<id>/events``: any task's status, and its states live (SSE);
* ``/``: a page whose button runs the report and whose bar follows its event stream.

``python main.py --embedded`` runs without RabbitMQ: the tasks run in this process (the
library's embedded mode), users are kept in SQLite.

``make_app()`` builds the application only: whoever serves it sets up the producer, either
process-wide (``setup_nonblocking_producer(backend.v1.app)``, as :func:`main` does) or
passed in (``make_app(producer=Producer(backend.v1.app))``).
"""

from __future__ import annotations

import argparse
import asyncio
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
from serving import configure_logging, page_routes, serve  # noqa: E402

from tcelery_req_handler import (  # noqa: E402
    Producer,
    TCeleryNotFoundHandler,
    routes,
    setup_nonblocking_producer,
    tcelery_async_routes,
    tcelery_routes,
    tcelery_status_routes,
)


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
        tcelery_async_routes(r"/v1/async_report", post_tasks=[tasks.report],
                             producer=producer),
        tcelery_status_routes("/tasks", producer=producer),
        page_routes("report.html"),
    ), **settings)


async def main(port: int = 8888, address: str = "127.0.0.1", embedded: bool = False) -> int:
    """Connect to RabbitMQ (or run embedded), serve until SIGINT/SIGTERM, then shut down;
    the exit status."""
    options = {"broker_url": "memory://"} if embedded else {}
    return await serve("main.py", lambda: setup_nonblocking_producer(backend.v1.app, **options),
                       make_app, port, address, "/")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``--port``, ``--address`` and ``--log-level``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8888, help="TCP port (default 8888)")
    parser.add_argument("--address", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1)")
    parser.add_argument("--embedded", action="store_true",
                        help="run the tasks in this process: no RabbitMQ needed")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"],
                        help="'info' adds one access-log line per request (default warning)")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    """The command line: parse ``argv``, configure logging, serve; the exit status."""
    args = parse_args(argv)
    configure_logging(args.log_level)
    return asyncio.run(main(args.port, args.address, args.embedded))


if __name__ == "__main__":
    sys.exit(run())
