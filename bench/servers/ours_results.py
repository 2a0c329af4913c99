"""Ours for the latency and event-stream tests: the library's routes on one results backend.

``--results rpc`` (the example's ``rpc://``) or ``--results redis`` (``result_backend =
redis://``: the producer gets states by Redis pub/sub push). Built from the public API only:

* ``GET /v1/sleep``: ``tcelery_routes`` waiting on ``bench.sleep`` (rpc) or
  ``bench.sleep_redis`` (redis), which sleep 20 ms in the worker;
* ``GET /tasks/<id>/events`` (and ``/tasks/<id>``): ``tcelery_status_routes``;
* ``GET /pending``: how many results the producer follows.

The open-file limit is raised to its hard limit: the stream test holds 10,000 connections.
"""

from __future__ import annotations

import asyncio
import resource

import tornado.web
from celery import Celery

from bench.config import BROKER_URL, REDIS_URL, SLEEP, SLEEP_REDIS, queue
from bench.servers.common import parse_args, serve_until_terminated
from tcelery_req_handler import (
    get_producer,
    routes,
    setup_nonblocking_producer,
    tcelery_routes,
    tcelery_status_routes,
)


class PendingHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"pending": get_producer().pending})


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def make_celery(results: str) -> Celery:
    celery = Celery("bench_ours_" + results, broker=BROKER_URL,
                    backend=REDIS_URL if results == "redis" else "rpc://")
    celery.conf.update(task_default_queue=queue(), task_serializer="json",
                       accept_content=["json"], result_accept_content=["json"])
    return celery


def make_app(results: str) -> tornado.web.Application:
    return tornado.web.Application(routes(
        tcelery_routes(r"/v1/sleep", get_tasks=[SLEEP_REDIS if results == "redis" else SLEEP]),
        tcelery_status_routes("/tasks", stream_timeout=600),
        [(r"/pending", PendingHandler)],
    ), compress_response=False)


async def main(port: int, results: str) -> None:
    raise_fd_limit()
    producer = setup_nonblocking_producer(make_celery(results), result_timeout=60)
    await producer.connect()
    try:
        await serve_until_terminated(make_app(results), port)
    finally:
        await producer.close()  # deletes the rpc:// reply queue


if __name__ == "__main__":
    args = parse_args(__doc__ or "", extra=[("--results", {"choices": ("rpc", "redis"),
                                                           "default": "rpc"})])
    asyncio.run(main(args.port, args.results))
