"""The Celery app of the one worker every server shares: ``celery -A bench.worker_app worker``.

It *is* the example's app (``backend.v1.app``, with the example's tasks and config), plus two
tasks of the benchmark's own:

* ``bench.list_users_redis``: the same body as the example's ``list_users``, but storing its
  result in Redis. Flower's ``/api/task/apply`` waits with ``AsyncResult.get`` from a thread,
  which hangs with ``rpc://`` (the reply goes to a queue nobody consumes), so Flower is
  measured "with the backend it works with" while every other server uses ``rpc://``.
* ``bench.hold``: blocks until a Redis key exists (bounded), so the memory test can keep
  10,000 requests waiting on tasks that have not finished, then release them all at once.
* ``bench.sleep`` / ``bench.sleep_redis``: sleep a known time and return when they started
  and finished (``time.time()`` in the worker), results over ``rpc://`` / in Redis: the
  latency test subtracts the task's own run time from what the client waited.
* ``bench.progress``: ``steps`` PROGRESS states, each carrying ``time.time()`` at publish,
  then SUCCESS (Redis): what the event-stream test's 10,000 streams watch.

One worker (prefork, concurrency 2) serving every server means all four are measured
against the same task code, the same queue and the same amount of worker CPU.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from celery.backends.redis import RedisBackend
from celery.signals import worker_ready

from bench.config import (
    EXAMPLE_DIR,
    HOLD,
    LIST_USERS_REDIS,
    PROGRESS,
    REDIS_URL,
    SLEEP,
    SLEEP_REDIS,
)

if str(EXAMPLE_DIR) not in sys.path:
    sys.path.insert(0, str(EXAMPLE_DIR))

from backend.v1 import app  # type: ignore[import-not-found]  # the example's Celery app
from backend.v1 import tasks as example_tasks

#: Redis keys (results of the twin) expire on their own: nothing to clean up afterwards.
redis_backend = RedisBackend(app=app, url=os.environ.get("BENCH_REDIS_URL", REDIS_URL),
                             expires=600)

#: How long a held task may block at most, whatever happens to the runner.
HOLD_MAX_SECONDS = 120.0


@app.task(name=LIST_USERS_REDIS, backend=redis_backend)  # type: ignore[untyped-decorator]
def list_users_redis(**filters: Any) -> Any:
    """``backend.v1.tasks.list_users``, result stored in Redis (for Flower)."""
    return example_tasks.list_users.run(**filters)


@app.task(name=HOLD)  # type: ignore[untyped-decorator]
def hold(key: str, limit: float | str = 60.0) -> str:
    """Sleep until the Redis key ``key`` exists or ``limit`` seconds (at most 120) pass."""
    deadline = time.monotonic() + min(float(limit), HOLD_MAX_SECONDS)
    client = redis_backend.client
    while not client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    return key


def _sleep(task_id: str, ms: float | str) -> dict[str, Any]:
    started = time.time()
    time.sleep(min(float(ms), 1000.0) / 1000)
    return {"task_id": task_id, "started": started, "finished": time.time()}


@app.task(name=SLEEP, bind=True)  # type: ignore[untyped-decorator]
def sleep(self: Any, ms: float | str = 20) -> dict[str, Any]:
    """Sleep ``ms`` milliseconds (at most 1 s); say when the body started and ended."""
    return _sleep(self.request.id, ms)


@app.task(name=SLEEP_REDIS, bind=True, backend=redis_backend)  # type: ignore[untyped-decorator]
def sleep_redis(self: Any, ms: float | str = 20) -> dict[str, Any]:
    """``bench.sleep``, result stored in Redis."""
    return _sleep(self.request.id, ms)


@app.task(name=PROGRESS, bind=True, backend=redis_backend)  # type: ignore[untyped-decorator]
def progress(self: Any, steps: int | str = 5, interval: float | str = 0.1) -> dict[str, Any]:
    """``steps`` PROGRESS states ``interval`` s apart (each with ``t`` = ``time.time()`` just
    before it is stored and published), then SUCCESS with ``t`` in the result."""
    steps, interval = min(int(steps), 100), min(float(interval), 5.0)
    for i in range(steps):
        if i:
            time.sleep(interval)
        self.update_state(state="PROGRESS", meta={"i": i, "t": time.time()})
    time.sleep(interval)
    return {"steps": steps, "t": time.time()}


@worker_ready.connect  # type: ignore[untyped-decorator]
def _announce_ready(**_: Any) -> None:
    """Touch ``BENCH_READY_FILE``: how the runner knows the worker consumes."""
    ready_file = os.environ.get("BENCH_READY_FILE")
    if ready_file:
        Path(ready_file).touch()


__all__ = ["app", "hold", "list_users_redis", "progress", "sleep", "sleep_redis"]
