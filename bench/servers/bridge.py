"""(b) The executor bridge a competent user would write by hand, without this library.

Tornado handlers hand the blocking Celery calls to a thread pool:

* ``GET /v1/user``: ``await loop.run_in_executor(pool, lambda: task.apply_async().get(timeout))``
  then the result as JSON (200);
* ``GET /v1/async_user``: ``await loop.run_in_executor(pool, task.apply_async)``, then
  ``{"task_ids": [...]}`` (202), like the library's fire-and-forget routes;
* ``GET /v1/sleep``: as ``/v1/user``, on ``bench.sleep`` (the latency test's 20 ms task).

The Celery app uses the example's settings that matter on the wire (``rpc://`` results, JSON,
the run's queue) and sends the example's ``list_users`` by name. The pool has
``--threads`` threads (default 16: on 2 cores, 8-16 threads served the most requests;
32-128 only added GIL contention) and kombu's producer pool is sized to match, so no thread
queues for a broker connection.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import tornado.web
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from bench.config import BROKER_URL, LIST_USERS, SLEEP, queue
from bench.servers.common import parse_args, serve

RESULT_TIMEOUT = 30.0


def make_celery(threads: int) -> Celery:
    app = Celery("bench_bridge", broker=BROKER_URL, backend="rpc://")
    app.conf.update(task_default_queue=queue(), task_serializer="json", result_serializer="json",
                    accept_content=["json"], result_accept_content=["json"],
                    broker_pool_limit=threads, broker_connection_retry_on_startup=True)
    return app


class Bridge:
    """The pool and the task signature the handlers share."""

    def __init__(self, threads: int) -> None:
        self.celery = make_celery(threads)
        self.task = self.celery.signature(LIST_USERS)
        self.sleep = self.celery.signature(SLEEP)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bridge")

    def call(self) -> Any:
        return self.task.apply_async().get(timeout=RESULT_TIMEOUT)

    def call_sleep(self) -> Any:
        return self.sleep.apply_async().get(timeout=RESULT_TIMEOUT)


class UserHandler(tornado.web.RequestHandler):
    def initialize(self, bridge: Bridge) -> None:
        self.bridge = bridge

    async def get(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.bridge.pool, self.bridge.call)
        except CeleryTimeout:
            self.set_status(504)
            result = {"error": {"type": "TaskTimeout"}}
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(result, separators=(",", ":")))


class SleepHandler(UserHandler):
    async def get(self) -> None:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.bridge.pool, self.bridge.call_sleep)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(result, separators=(",", ":")))


class AsyncUserHandler(UserHandler):
    async def get(self) -> None:
        loop = asyncio.get_running_loop()
        sent = await loop.run_in_executor(self.bridge.pool, self.bridge.task.apply_async)
        self.set_status(202)
        self.write({"task_ids": [sent.id]})


def make_app(bridge: Bridge) -> tornado.web.Application:
    return tornado.web.Application([
        (r"/v1/user/?", UserHandler, {"bridge": bridge}),
        (r"/v1/async_user/?", AsyncUserHandler, {"bridge": bridge}),
        (r"/v1/sleep/?", SleepHandler, {"bridge": bridge}),
    ])


def main() -> None:
    args = parse_args(__doc__ or "", extra=[("--threads", {"type": int, "default": 16})])
    asyncio.run(serve(make_app(Bridge(args.threads)), args.port))


if __name__ == "__main__":
    main()
