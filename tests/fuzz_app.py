"""The Tornado app that ``tests/test_fuzz_http.py`` fuzzes, run as its own process.

``python -m tests.fuzz_app`` serves :data:`ROUTES` on a free loopback port, backed by the
test session's real workers (``tests.worker_app``, queues named by ``TCELERY_TEST_PREFIX``),
and prints ``PORT <n>`` once its producer is connected. It runs in a subprocess so that the
memory the test measures (``psutil`` RSS) is the server's alone.

:data:`ROUTES` is data, not only code: the test's oracle reads the same table to know which
verbs each route maps, its body limit, and what its tasks do with their arguments.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_BODY_SIZE = 1024 * 1024  # the library's default, restated for the oracle


@dataclass(frozen=True)
class Task:
    """One task of a route: ``echo`` (returns ``{"args", "kwargs"}``) or ``fail`` (raises
    ``ValueError(message)``), with a signature's partial ``args`` and fixed ``kwargs``."""

    kind: str  # "echo" or "fail"
    args: tuple[str, ...] = ()
    fixed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    pattern: str
    verbs: tuple[str, ...]  # the verbs that have tasks (each runs ``tasks``)
    tasks: tuple[Task, ...]
    fire: bool = False  # fire and forget (202) instead of waiting (200)
    max_body_size: int = DEFAULT_MAX_BODY_SIZE


ECHO = Task("echo")
ROUTES: tuple[Route, ...] = (
    Route(r"/echo", ("GET", "POST", "PUT", "DELETE"), (ECHO,)),
    Route(r"/echo/(?P<name>[^/]+)", ("GET", "POST", "PUT"), (ECHO,)),
    Route(r"/pos/([^/]+)/([^/]+)", ("GET", "POST"), (ECHO,)),
    Route(r"/small", ("POST", "PUT"), (ECHO,), max_body_size=64),
    Route(r"/multi", ("GET",), (ECHO, Task("echo", args=("first",)))),
    Route(r"/fixed", ("GET", "POST"), (Task("echo", fixed={"fixed": "yes"}),)),
    Route(r"/fail", ("GET", "POST"), (Task("fail"),)),
    Route(r"/fire", ("POST", "PUT"), (ECHO, ECHO), fire=True, max_body_size=4096),
    Route(r"/delete-only", ("DELETE",), (ECHO,)),
)


def build_rules() -> list[Any]:
    """Tornado rules for :data:`ROUTES` (imports the library and the worker app lazily, so
    the test can read the table without either)."""
    from tcelery_req_handler import routes, tcelery_async_routes, tcelery_routes
    from tests import worker_app

    def signature(task: Task) -> Any:
        target = worker_app.echo if task.kind == "echo" else worker_app.fail
        if not task.args and not task.fixed:
            return target if task.kind == "fail" else "tests.worker_app.echo"
        return target.s(*task.args, **task.fixed)

    rules = []
    for route in ROUTES:
        factory = tcelery_async_routes if route.fire else tcelery_routes
        verb_tasks = {f"{verb.lower()}_tasks": [signature(t) for t in route.tasks]
                      for verb in route.verbs}
        rules.append(factory(route.pattern, max_body_size=route.max_body_size, **verb_tasks))
    return routes(*rules)


async def serve() -> None:
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets
    from tornado.web import Application

    from tcelery_req_handler import TCeleryNotFoundHandler, setup_nonblocking_producer
    from tests import worker_app

    producer = setup_nonblocking_producer(worker_app.app)
    await producer.connect()
    app = Application(build_rules(), default_handler_class=TCeleryNotFoundHandler)
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    print(f"PORT {sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.stop()
    await server.close_all_connections()
    await producer.close()


def main() -> None:
    # Every 4xx is an access-log line and a tornado.general warning; tens of thousands of them
    # would only cost time. What matters is kept: uncaught exceptions (tornado.application)
    # and the library's own warnings.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("tornado.access").setLevel(logging.CRITICAL)
    logging.getLogger("tornado.general").setLevel(logging.ERROR)
    sys.path.insert(0, os.getcwd())
    asyncio.run(serve())


if __name__ == "__main__":
    main()
