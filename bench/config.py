"""Names and addresses every part of the benchmark agrees on.

The benchmark runs in a RabbitMQ virtual host of its own (``tcelery-bench``), so the queue
names the example hard-codes (``payment_default1``) cannot collide with a developer's
example worker running on the default vhost of the same broker, and vice versa.
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
VHOST = os.environ.get("BENCH_VHOST", "tcelery-bench")
BROKER_URL = os.environ.get("BENCH_BROKER_URL", f"amqp://guest:guest@{HOST}:{AMQP_PORT}/{VHOST}")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", f"redis://{HOST}:6379/15")

#: The queue the example's tasks are routed to (its ``task_default_queue``); the shared
#: worker consumes only this queue, and every peer sends there.
QUEUE = "payment_default1"

#: The example's task behind ``GET /v1/user``; every peer runs exactly this task body.
LIST_USERS = "backend.v1.tasks.list_users"
#: A twin of LIST_USERS that stores its result in Redis: the backend Flower can wait on.
LIST_USERS_REDIS = "bench.list_users_redis"
#: A task that blocks until a Redis key appears: the memory test's "task that sleeps".
HOLD = "bench.hold"
