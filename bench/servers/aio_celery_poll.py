"""The polling client of the latency test: Tornado + aio-celery, waiting by polling Redis.

``GET /v1/sleep`` sends ``bench.sleep_redis`` with aio-celery (``pip install aio-celery``, an
asyncio Celery client over aio-pika) and awaits ``AsyncResult.get()`` at its default
``interval=0.5``: aio-celery reads ``celery-task-meta-<id>`` with one Redis GET, then sleeps
0.5 s between GETs until the state is no longer PENDING.

Without aio-celery installed (``--emulate``, or the import fails), the same thing is done by
hand, exactly as aio-celery does it: the task is published with the library's producer
(``reply=False``), then the key is read with ``redis.asyncio`` GET every 0.5 s. ``GET /mode``
says which of the two runs, for the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import tornado.web

from bench.config import BROKER_URL, REDIS_URL, SLEEP_REDIS, queue
from bench.servers.common import parse_args, serve_until_terminated

#: aio-celery's default ``AsyncResult.get(interval=0.5)``.
INTERVAL = 0.5
TIMEOUT = 30.0

Waiter = Callable[[], Awaitable[Any]]


@contextlib.asynccontextmanager
async def aio_celery_waiter() -> AsyncIterator[Waiter]:
    from aio_celery import Celery  # type: ignore[import-untyped,import-not-found,unused-ignore]

    app = Celery()
    app.conf.update(broker_url=BROKER_URL.replace("pyamqp://", "amqp://"),
                    result_backend=REDIS_URL, task_default_queue=queue())

    async def call() -> Any:
        result = await app.send_task(SLEEP_REDIS)
        return await result.get(timeout=TIMEOUT)  # interval: aio-celery's default, 0.5 s

    async with app.setup():
        yield call


@contextlib.asynccontextmanager
async def emulated_waiter() -> AsyncIterator[Waiter]:
    import redis.asyncio as aioredis
    from celery import Celery

    from tcelery_req_handler import Producer

    celery = Celery("bench_poll", broker=BROKER_URL)
    celery.conf.update(task_default_queue=queue(), task_serializer="json",
                       accept_content=["json"])
    producer = Producer(celery)
    client = aioredis.Redis.from_url(REDIS_URL)

    async def call() -> Any:
        sent = await producer.send_task(SLEEP_REDIS, reply=False)
        key = f"celery-task-meta-{sent.task_id}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while True:
            value = await client.get(key)
            if value is not None and json.loads(value)["status"] != "PENDING":
                return json.loads(value)["result"]
            if loop.time() > deadline:
                raise TimeoutError(key)
            await asyncio.sleep(INTERVAL)

    await producer.connect()
    try:
        yield call
    finally:
        await producer.close()
        await client.aclose()


class SleepHandler(tornado.web.RequestHandler):
    def initialize(self, call: Waiter) -> None:
        self.call = call

    async def get(self) -> None:
        try:
            result = await self.call()
        except Exception as exc:  # a timeout, mostly: answer, never hang
            self.set_status(504)
            result = {"error": {"type": type(exc).__name__}}
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(result, separators=(",", ":")))


class ModeHandler(tornado.web.RequestHandler):
    def initialize(self, mode: str) -> None:
        self.mode = mode

    def get(self) -> None:
        self.write({"mode": self.mode, "interval": INTERVAL})


async def main(port: int, emulate: bool) -> None:
    mode, factory = "aio-celery", aio_celery_waiter
    if emulate:
        mode, factory = "emulated", emulated_waiter
    else:
        try:
            import aio_celery  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
        except ImportError:
            mode, factory = "emulated", emulated_waiter
    async with factory() as call:
        app = tornado.web.Application([
            (r"/v1/sleep/?", SleepHandler, {"call": call}),
            (r"/mode", ModeHandler, {"mode": mode}),
        ])
        await serve_until_terminated(app, port)


if __name__ == "__main__":
    args = parse_args(__doc__ or "", extra=[("--emulate", {"action": "store_true"})])
    asyncio.run(main(args.port, args.emulate))
