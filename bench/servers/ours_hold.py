"""Our server for the memory test: ``GET /hold?key=K`` waits on ``bench.hold(key=K)``.

Built only from the library's public API (``tcelery_routes`` on a task *name*, and
``setup_nonblocking_producer``), like the example. ``GET /pending`` answers how many results
the producer is awaiting, so the runner knows when all its requests are really waiting.
"""

from __future__ import annotations

import asyncio

import tornado.web
from celery import Celery

from bench.config import BROKER_URL, HOLD, queue
from bench.servers.common import parse_args, serve
from tcelery_req_handler import get_producer, routes, setup_nonblocking_producer, tcelery_routes

HOLD_TIMEOUT = 150.0


class PendingHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"pending": get_producer().pending})


def make_app() -> tornado.web.Application:
    return tornado.web.Application(routes(
        tcelery_routes(r"/hold", get_tasks=[HOLD], timeout=HOLD_TIMEOUT),
        [(r"/pending", PendingHandler)],
    ), compress_response=False)


async def main(port: int) -> None:
    celery = Celery("bench_hold", broker=BROKER_URL, backend="rpc://")
    celery.conf.update(task_default_queue=queue(), task_serializer="json",
                       accept_content=["json"], result_accept_content=["json"])
    producer = setup_nonblocking_producer(celery, result_timeout=HOLD_TIMEOUT)
    await producer.connect()
    await serve(make_app(), port)


if __name__ == "__main__":
    asyncio.run(main(parse_args(__doc__ or "").port))
