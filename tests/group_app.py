"""The Celery app of the group tests' real worker: Redis results, a queue of the run's own.

``celery -A tests.group_app worker`` runs it; the tests send its tasks from the same module.
Its queue (``<run prefix>.groups``) and its Redis ``global_keyprefix``
(``<run prefix>:groups:``) come from ``TCELERY_TEST_PREFIX``, so they are unique to the run,
and :func:`cleanup` removes them. ``count`` INCRs a Redis counter every time it runs: the
tests read it to prove that a task ran, or did not.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready

from tests.workers import announce_ready

PREFIX = os.environ.get("TCELERY_TEST_PREFIX", "tcelery-test")
BROKER_URL = os.environ.get("TCELERY_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("TCELERY_TEST_REDIS", "redis://127.0.0.1:6379/0")  # conftest checks
QUEUE = f"{PREFIX}.groups"
#: A queue no worker consumes: what is sent there stays there, to be counted.
IDLE_QUEUE = f"{PREFIX}.groups-idle"
KEYPREFIX = f"{PREFIX}:groups:"

app = Celery("tcelery_group_tests", broker=BROKER_URL, backend=REDIS_URL,
             set_as_current=False)
app.conf.update(
    task_default_queue=QUEUE,
    result_backend_transport_options={"global_keyprefix": KEYPREFIX},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=None,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)

_client: redis.Redis | None = None


def redis_client() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(REDIS_URL)
    return _client


def cache_keyprefix(celery_app: Celery = app) -> bytes:
    """The prefix of the library's cache keys for ``celery_app``: its backend's
    ``task_keyprefix`` with ``celery-task-meta-`` replaced by ``tcelery-cache-``.

    Taken from the backend rather than written out: Celery 5.3/5.4 put ``_`` after any
    ``global_keyprefix``, 5.5+ only when it does not already end in one of ``:_-.``.
    """
    prefix: bytes = celery_app.backend.task_keyprefix
    return prefix.replace(b"celery-task-meta-", b"tcelery-cache-")


def cache_key(name: str, args: list[Any], kwargs: dict[str, Any],
              celery_app: Celery = app) -> bytes:
    """The Redis key under which the library caches ``name(*args, **kwargs)``'s result."""
    from tcelery_req_handler.cache import ResultCache

    return cache_keyprefix(celery_app) + ResultCache.key(name, args, kwargs).encode()


def counter_key(name: str) -> str:
    return f"{KEYPREFIX}counter:{name}"


def runs(name: str) -> int:
    """How many times ``count`` ran with this counter name."""
    value = redis_client().get(counter_key(name))
    return int(value) if value is not None else 0


worker_ready.connect(announce_ready)


@app.task(name="groups.count")
def count(counter: str, x: int, delay: float = 0.0) -> int:
    """``2 * x``, after INCRing ``counter`` (and sleeping ``delay`` seconds)."""
    redis_client().incr(counter_key(counter))
    if delay:
        time.sleep(delay)
    return 2 * x


@app.task(name="groups.where", bind=True)
def where(self: Any, x: int) -> dict[str, Any]:
    """The group headers this member's message carried."""
    return {"x": x, "group": self.request.group, "group_index": self.request.group_index}


@app.task(name="groups.maybe_fail")
def maybe_fail(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x


@app.task(name="groups.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def delete_keys(prefix: str) -> None:
    client = redis_client()
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


def delete_queues(*names: str) -> None:
    """Delete RabbitMQ queues and the direct exchanges of the same name."""
    from tests.conftest import delete_queues_and_exchanges

    delete_queues_and_exchanges(list(names))


def cleanup() -> None:
    """Delete the run's Redis keys and RabbitMQ queues (and their exchanges)."""
    delete_keys(KEYPREFIX)
    delete_queues(QUEUE, IDLE_QUEUE)
