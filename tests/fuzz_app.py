"""The Tornado app that ``tests/test_fuzz_http.py`` fuzzes, run as its own process.

``python -m tests.fuzz_app`` serves :data:`ROUTES` on a free loopback port, backed by the
test session's real workers (``tests.worker_app``, queues named by ``TCELERY_TEST_PREFIX``),
and prints ``PORT <n>`` once its producer is connected. It runs in a subprocess so that the
memory the test measures (``psutil`` RSS) is the server's alone.

:data:`ROUTES` is data, not only code: the test's oracle reads the same table to know which
verbs each route maps, its body limit, and what its tasks do with their arguments.

Every route but ``/fail-remote`` sends tasks this process knows, so the
library checks the request's arguments against the task's signature before sending: ``fail``
takes exactly ``message``, so anything else is a 400 naming the argument. ``/fail-remote``
sends ``fail`` by name through a producer whose app does not check arguments (Celery's
``strict_typing=False``): the worker's TypeError is then a 500, as before the check.
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

    kind: str  # "echo" (takes anything) or "fail" (takes exactly ``message``)
    args: tuple[str, ...] = ()
    fixed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    pattern: str
    verbs: tuple[str, ...]  # the verbs that have tasks (each runs ``tasks``)
    tasks: tuple[Task, ...]
    fire: bool = False  # fire and forget (202) instead of waiting (200)
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    #: Sent by name through a producer whose app does not check arguments (Celery's
    #: ``strict_typing=False``): the worker refuses arguments that do not fit (a 500).
    unchecked: bool = False


ECHO = Task("echo")
ROUTES: tuple[Route, ...] = (
    Route(r"/echo", ("GET", "POST", "PUT", "DELETE"), (ECHO,)),
    Route(r"/echo/(?P<name>[^/]+)", ("GET", "POST", "PUT"), (ECHO,)),
    Route(r"/pos/([^/]+)/([^/]+)", ("GET", "POST"), (ECHO,)),
    Route(r"/small", ("POST", "PUT"), (ECHO,), max_body_size=64),
    Route(r"/multi", ("GET",), (ECHO, Task("echo", args=("first",)))),
    Route(r"/fixed", ("GET", "POST"), (Task("echo", fixed={"fixed": "yes"}),)),
    Route(r"/fail", ("GET", "POST"), (Task("fail"),)),
    Route(r"/fail-remote", ("GET", "POST"), (Task("fail"),), unchecked=True),
    # The second task checks the arguments too: anything but ``message`` sends neither.
    Route(r"/multi-fail", ("GET", "POST"), (ECHO, Task("fail"))),
    Route(r"/fire", ("POST", "PUT"), (ECHO, ECHO), fire=True, max_body_size=4096),
    Route(r"/delete-only", ("DELETE",), (ECHO,)),
)


def build_rules(unchecked_producer: Any = None) -> list[Any]:
    """Tornado rules for :data:`ROUTES` (imports the library and the worker app lazily, so
    the test can read the table without either). ``unchecked_producer`` sends the tasks of
    the ``unchecked`` routes."""
    from tcelery_req_handler import routes, tcelery_async_routes, tcelery_routes
    from tests import worker_app

    def signature(task: Task, unchecked: bool) -> Any:
        if unchecked:
            return f"tests.worker_app.{task.kind}"
        target = worker_app.echo if task.kind == "echo" else worker_app.fail
        if not task.args and not task.fixed:
            return target if task.kind == "fail" else "tests.worker_app.echo"
        return target.s(*task.args, **task.fixed)

    rules = []
    for route in ROUTES:
        factory = tcelery_async_routes if route.fire else tcelery_routes
        verb_tasks = {f"{verb.lower()}_tasks": [signature(t, route.unchecked)
                                                for t in route.tasks]
                      for verb in route.verbs}
        extra = {"producer": unchecked_producer} if route.unchecked else {}
        rules.append(factory(route.pattern, max_body_size=route.max_body_size, **verb_tasks,
                             **extra))
    return routes(*rules)


async def serve() -> None:
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets
    from tornado.web import Application

    from tcelery_req_handler import Producer, TCeleryNotFoundHandler, setup_nonblocking_producer
    from tests import worker_app

    producer = setup_nonblocking_producer(worker_app.app)
    await producer.connect()
    # The same queues, through an app whose tasks skip argument checks (Celery's
    # strict_typing=False): the worker alone decides. (An app that merely lacks the task
    # module would not do: @app.task is shared, every app finalized later registers it.)
    unchecked_app = worker_app.make_app()
    unchecked_app.strict_typing = False
    unchecked = Producer(unchecked_app)
    await unchecked.connect()
    app = Application(build_rules(unchecked), default_handler_class=TCeleryNotFoundHandler)
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
    await unchecked.close()
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
