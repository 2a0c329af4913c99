"""The Celery app of the Redis fault tests' worker (``celery -A tests.faults.redis_app``).

Broker: the system RabbitMQ (``TCELERY_REDIS_FAULT_BROKER``). Result backend: the tests'
private redis-server (``TCELERY_REDIS_FAULT_BACKEND``), reached *directly*, so the worker
keeps storing and publishing states while the producer's own link to Redis is cut. Default
queue: ``TCELERY_REDIS_FAULT_QUEUE``. All three are read from the environment at import; in
the test process :func:`make_app` builds a client app with the same settings but a backend
URL that goes through the test's proxy. Tasks are sent by their explicit names.
"""

from __future__ import annotations

import os
import time
from functools import cache
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready

from tests.workers import announce_ready

BROKER_URL = os.environ.get("TCELERY_REDIS_FAULT_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
BACKEND_URL = os.environ.get("TCELERY_REDIS_FAULT_BACKEND", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("TCELERY_REDIS_FAULT_QUEUE", "tcelery-redis-faults.default")

ADD = "rfaults.add"
GATED = "rfaults.gated"
PICKLED = "rfaults.pickled"

#: The key a GATED task polls; the test sets it (straight on the private Redis) to let it end.
GATE = "tcelery-gate-{token}"


def make_app(broker_url: str, backend_url: str, queue: str) -> Celery:
    """A Celery app with a Redis result backend, JSON only, default queue ``queue``."""
    app = Celery("tcelery_redis_faults", broker=broker_url, backend=backend_url,
                 set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        result_serializer="json",
        result_accept_content=["json"],
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        # a store that fails while the private Redis is down gives up soon, not after minutes
        result_backend_transport_options={"retry_policy": {"max_retries": 3}},
    )
    return app


app = make_app(BROKER_URL, BACKEND_URL, QUEUE)


worker_ready.connect(announce_ready)


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(BACKEND_URL)


@cache
def _pickle_backend() -> Any:
    """A Redis backend on the same server that stores pickle: what a worker configured with
    ``result_serializer="pickle"`` would write."""
    other = Celery("tcelery_redis_pickle", broker=BROKER_URL, backend=BACKEND_URL,
                   set_as_current=False)
    other.conf.update(result_serializer="pickle", result_accept_content=["pickle", "json"])
    return other.backend


@app.task(name=ADD)
def add(x: int | str, y: int | str) -> int:
    """``x + y`` as integers (they may come as strings from a URL path)."""
    return int(x) + int(y)


@app.task(name=GATED, bind=True)
def gated(self: Any, token: str, value: str) -> str:
    """Report PROGRESS, wait (at most 30 s) for the gate key ``GATE`` to exist, return
    ``value``: the test decides when the SUCCESS is stored."""
    self.update_state(state="PROGRESS", meta={"step": 1, "token": token})
    key = GATE.format(token=token)
    deadline = time.monotonic() + 30
    while not _redis().exists(key) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


@app.task(name=PICKLED, bind=True, ignore_result=True)
def pickled(self: Any, value: str) -> None:
    """Store (and publish) SUCCESS with ``value`` for this task, pickle-serialized."""
    _pickle_backend().store_result(self.request.id, value, "SUCCESS")
