"""Names and addresses every part of the benchmark agrees on.

Every run sends its tasks to a queue of its own (``bench-<run id>``, passed to every child in
``BENCH_QUEUE``, and to the example as ``EXAMPLE_QUEUE``). On a shared broker, neither a
developer's example worker on ``payment_default1`` nor a concurrent benchmark run (the smoke
test in someone's test suite) can take this run's tasks, or have its own taken.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
EXAMPLE_DIR = ROOT / "example"
RESULTS_DIR = BENCH_DIR / "results"
TMP_DIR = RESULTS_DIR / "tmp"  # logs, payload, SQLite; git-ignored

HOST = "127.0.0.1"
AMQP_PORT = int(os.environ.get("BENCH_AMQP_PORT", "5672"))
BROKER_URL = os.environ.get("BENCH_BROKER_URL", f"amqp://guest:guest@{HOST}:{AMQP_PORT}//")
REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", f"redis://{HOST}:{REDIS_PORT}/15")

#: Used only when a module runs outside the runner (which always sets ``BENCH_QUEUE``).
DEFAULT_QUEUE = "bench.payment_default1"


def queue() -> str:
    """This run's task queue: the shared worker consumes only it, and every server sends
    there (the example through ``EXAMPLE_QUEUE``, which sets its ``task_default_queue``)."""
    return os.environ.get("BENCH_QUEUE", DEFAULT_QUEUE)


#: The example's task behind ``GET /v1/user``; every peer runs exactly this task body.
LIST_USERS = "backend.v1.tasks.list_users"
#: A twin of LIST_USERS that stores its result in Redis: the backend Flower can wait on.
LIST_USERS_REDIS = "bench.list_users_redis"
#: A task that blocks until a Redis key appears: the memory test's "task that sleeps".
HOLD = "bench.hold"

#: A task that sleeps a known time (``ms``, default 20) and returns when it started and ended,
#: measured in the worker: the latency test's task (``rpc://`` results).
SLEEP = "bench.sleep"
#: Its twin storing the result in Redis (ours on Redis results, Flower, the polling client).
SLEEP_REDIS = "bench.sleep_redis"
#: A task that reports ``steps`` PROGRESS states (each with ``time.time()`` in its meta) and
#: then succeeds, results in Redis: what the event streams watch.
PROGRESS = "bench.progress"
