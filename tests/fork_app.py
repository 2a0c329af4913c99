"""A Tornado server in several processes (``tornado.process.fork_processes``), one producer
per child, for ``tests/test_processes.py``.

``python -m tests.fork_app PORT_FILE [CHILDREN]``: binds a free loopback port (written to
PORT_FILE once bound), forks the children, and each child sets up its own producer after
the fork and serves ``GET /add/<x>/<y>`` (waits for ``tests.worker_app.add_ints``). Every
answer names the child that served it (``X-Pid``) and that child's reply queue
(``X-Reply-Queue``). On SIGTERM a child closes its producer (deleting its reply queue) and
exits; the parent exits when its children have.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tornado import netutil, process
from tornado.httpserver import HTTPServer
from tornado.web import Application

from tcelery_req_handler import (
    TCeleryReqHandler,
    get_producer,
    routes,
    setup_nonblocking_producer,
    tcelery_routes,
)


class WhoAnswers(TCeleryReqHandler):
    """The waiting handler, naming the process and its reply queue in every response."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("X-Pid", str(os.getpid()))
        queue = get_producer().reply_queue
        self.set_header("X-Reply-Queue", queue.name if queue is not None else "")


async def serve(sockets: list[Any]) -> None:
    from tests import worker_app

    setup_nonblocking_producer(worker_app.app, result_timeout=20)  # after the fork
    app = Application(routes(tcelery_routes(r"/add/(\d+)/(\d+)",
                                            get_tasks=["tests.worker_app.add_ints"],
                                            timeout=20, handler=WhoAnswers)))
    server = HTTPServer(app)
    server.add_sockets(sockets)
    await get_producer().connect()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.stop()
    await get_producer().close()


def main() -> None:
    port_file = Path(sys.argv[1])
    children = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.rename(port_file)
    process.fork_processes(children, max_restarts=0)  # the parent waits in here
    asyncio.run(serve(sockets))


if __name__ == "__main__":
    main()
