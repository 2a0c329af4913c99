"""A Tornado app with a fire-and-forget route and the status routes, run as its own process.

``python -m tests.status_app`` serves, on a free loopback port, for ``tests.worker_app.app``
(whose result backend and queues come from the ``TCELERY_TEST_*`` environment variables):

* ``POST /fire/progress`` → ``tests.worker_app.progress`` (``steps``, ``delay``), sent with a
  1 s countdown, so that another process can start watching it before it runs;
* ``/tasks/<id>``, ``/tasks/<id>/events`` → the status routes;
* ``GET /health`` → ``producer.source.describe()`` and ``producer.pending``.

It prints ``PORT <n>`` once its producer is connected and stops on SIGTERM.
``tests/test_status.py`` runs two of them on Redis: a task sent through one is watched
through the other.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys


async def serve() -> None:
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets
    from tornado.web import Application

    from tcelery_req_handler import (
        TCeleryNotFoundHandler,
        routes,
        setup_nonblocking_producer,
        tcelery_async_routes,
        tcelery_status_routes,
    )
    from tcelery_req_handler.web.base import JSONErrorsMixin
    from tests import worker_app

    producer = setup_nonblocking_producer(worker_app.app)
    await producer.connect()

    class Health(JSONErrorsMixin):
        def get(self) -> None:
            assert producer.source is not None
            self.write_json({**producer.source.describe(), "pending": producer.pending})

    app = Application(routes(
        tcelery_async_routes(r"/fire/progress", post_tasks=["tests.worker_app.progress"],
                             countdown=1),
        tcelery_status_routes("/tasks"),
        [(r"/health", Health)],
    ), default_handler_class=TCeleryNotFoundHandler)
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    print(f"PORT {sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.stop()
    await server.close_all_connections()
    await producer.close()


def main() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.path.insert(0, os.getcwd())
    asyncio.run(serve())


if __name__ == "__main__":
    main()
