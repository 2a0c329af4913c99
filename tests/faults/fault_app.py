"""The Celery app that the fault tests' own workers run (``celery -A tests.faults.fault_app``).

It is separate from ``tests.worker_app`` because a fault worker talks to a private node: the
worker reads ``TCELERY_FAULT_BROKER`` and ``TCELERY_FAULT_QUEUE`` from its environment at
import. In the test process, :func:`make_app` builds a client app with the same settings for
``Producer(app, broker_url=...)``; tasks are sent by their explicit names.

``faults.record`` adds a token to a Redis set, so a test can count which tasks really ran,
whatever happened to the broker in between.
"""

from __future__ import annotations

import os
import time
from functools import cache

import redis
from celery import Celery
from celery.signals import worker_ready

from tests.workers import announce_ready

BROKER_URL = os.environ.get("TCELERY_FAULT_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = os.environ.get("TCELERY_FAULT_QUEUE", "tcelery-faults.default")
REDIS_URL = os.environ.get("TCELERY_FAULT_REDIS", "redis://127.0.0.1:6379/0")

RECORD = "faults.record"
SLEEP = "faults.sleep"
ADD = "faults.add"


def make_app(broker_url: str, queue: str) -> Celery:
    """A Celery app for the fault tests: rpc:// results, default queue ``queue``.

    Delivery mode is left at Celery's default (persistent): the broker-restart tests prove
    that what users get by default survives a restart.
    """
    app = Celery("tcelery_faults", broker=broker_url, backend="rpc://", set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_track_started=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a fault worker outlives any broker outage
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        result_expires=None,
    )
    return app


app = make_app(BROKER_URL, QUEUE)


worker_ready.connect(announce_ready)


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


@app.task(name=RECORD)
def record(key: str, token: str) -> str:
    """Remember that this task ran: add ``token`` to the Redis set ``key``."""
    _redis().sadd(key, token)
    return token


@app.task(name=SLEEP)
def sleep(seconds: float | str) -> float:
    """Sleep (``seconds`` may come as a string from a URL path)."""
    time.sleep(float(seconds))
    return float(seconds)


@app.task(name=ADD)
def add(x: int | str, y: int | str) -> int:
    """``x + y`` as integers (they may come as strings from a URL path)."""
    return int(x) + int(y)
