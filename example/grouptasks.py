"""Seed 002's system on tcelery-req-handler: batches submitted as one Celery group, their
progress polled (or streamed), each result cached in Redis.

From ``example/``, with RabbitMQ and Redis running::

    celery -A backend.grouptasks worker -n grouptasks@%h     # one terminal
    python grouptasks.py --port 5000                          # another

The HTTP contract is exactly the seed's, field names included:

* ``POST /grouptasks`` ``{"tasks": [{"paramA": 1, "paramB": 5}, ...]}`` →
  ``{"groupTaskId", "taskIds"}``;
* ``GET /grouptasks/<id>`` → ``{"groupTaskId", "grouptaskProcessed", "grouptaskSucceeded",
  "results", "tasksCompleted", "tasksTotal"}`` (``results``: those of the finished tasks);
* ``GET /tasks/<id>`` → ``{"result", "resultReady", "taskId", "taskState", "taskSucceeded"}``;

plus what the library adds: ``GET /grouptasks/<id>/events`` and ``GET /tasks/<id>/events``
(the same JSON, pushed as Server-Sent Events), ``?wait=S``, and ``DELETE`` to revoke. The
routes are the library's; the two small mixins below only reshape its JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import backend.grouptasks  # noqa: E402
import tornado.web  # noqa: E402
from backend.grouptasks import tasks  # noqa: E402
from serving import configure_logging, page_routes, serve  # noqa: E402

from tcelery_req_handler import (  # noqa: E402
    Producer,
    TCeleryNotFoundHandler,
    routes,
    setup_nonblocking_producer,
    tcelery_group_routes,
    tcelery_status_routes,
)

#: Seconds a cached result is served again (``GROUPTASKS_CACHE``, default one hour).
CACHE_SECONDS = float(os.environ.get("GROUPTASKS_CACHE", "3600"))


class SeedGroupJSON:
    """The seed's field names for a group (a mixin: the library's handlers do the work)."""

    def submitted_json(self, body: dict[str, Any]) -> Any:
        return {"groupTaskId": body["group_id"], "taskIds": body["task_ids"]}

    def group_json(self, status: dict[str, Any]) -> Any:
        return {
            "groupTaskId": status["group_id"],
            "grouptaskProcessed": status["processed"],
            "grouptaskSucceeded": status["succeeded"],
            "results": [result for result, state in zip(status["results"], status["states"],
                                                        strict=True) if state == "SUCCESS"],
            "tasksCompleted": status["tasks_completed"],
            "tasksTotal": status["tasks_total"],
        }


class SeedTaskJSON:
    """The seed's field names for one task."""

    def task_json(self, status: dict[str, Any]) -> Any:
        return {
            "result": status["result"],
            "resultReady": status["ready"],
            "taskId": status["task_id"],
            "taskState": status["state"],
            "taskSucceeded": status["successful"],
        }


def make_app(producer: Producer | None = None, **settings: Any) -> tornado.web.Application:
    """The seed's routes, the library's own under ``/api`` (the page follows those: the seed's
    JSON has no per-member states), and the page at ``/``; ``producer`` defaults to the
    process-wide one."""
    settings.setdefault("default_handler_class", TCeleryNotFoundHandler)
    return tornado.web.Application(routes(
        tcelery_group_routes(r"/grouptasks", tasks.add, handler=SeedGroupJSON,
                             cache=CACHE_SECONDS, producer=producer, timeout=60),
        tcelery_status_routes("/tasks", handler=SeedTaskJSON, producer=producer),
        tcelery_group_routes(r"/api/grouptasks", tasks.add, producer=producer, timeout=60,
                             name="api-grouptasks"),
        tcelery_status_routes("/api/tasks", producer=producer, name="api-tasks"),
        page_routes("grouptasks.html"),
    ), **settings)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=5000, help="TCP port (default 5000)")
    parser.add_argument("--address", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1)")
    parser.add_argument("--embedded", action="store_true",
                        help="run the tasks in this process: no RabbitMQ or Redis needed")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    options = {"broker_url": "memory://"} if args.embedded else {}
    return asyncio.run(serve(
        "grouptasks.py", lambda: setup_nonblocking_producer(backend.grouptasks.app, **options),
        make_app, args.port, args.address, "/"))


if __name__ == "__main__":
    sys.exit(run())
