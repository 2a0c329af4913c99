"""Start the one Celery worker all servers share, and seed the example's database.

The worker is the example's documented one (prefork, ``--concurrency 2``, run from
``example/``), on this run's queue instead of ``payment_default1``, with the benchmark's app
module (``bench.worker_app``: the example's app plus two bench tasks). Logging is at WARNING:
at INFO the worker writes two log lines per task, CPU charged to every server alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from celery import Celery

from bench.config import BROKER_URL, EXAMPLE_DIR, LIST_USERS, REDIS_URL, ROOT, queue
from bench.procs import Managed

SEED_USERS = 10
CREATE_USER = "backend.v1.tasks.create_user"


def worker_env(tmp: Path) -> dict[str, str]:
    """Environment shared by the worker and the example app: the run's queue, SQLite file."""
    return {
        "BROKER_URL": BROKER_URL,
        "BENCH_REDIS_URL": REDIS_URL,
        "BENCH_QUEUE": queue(),
        "EXAMPLE_QUEUE": queue(),
        "EXAMPLE_DB": str(tmp / "users.sqlite3"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLE_DIR),
                                       os.environ.get("PYTHONPATH", "")]),
    }


def start_worker(tmp: Path, *, concurrency: int = 2, timeout: float = 60.0) -> Managed:
    ready = tmp / "worker.ready"
    ready.unlink(missing_ok=True)
    node = f"bench-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    argv = [sys.executable, "-m", "celery", "-A", "bench.worker_app", "worker",
            "-Q", queue(), "-c", str(concurrency), "-P", "prefork", "-l", "WARNING",
            "-n", node, "--without-gossip", "--without-mingle"]
    worker = Managed("worker", argv, cwd=EXAMPLE_DIR, log_dir=tmp,
                     env={**worker_env(tmp), "BENCH_READY_FILE": str(ready)})
    worker.node = node  # the ceiling test tells this worker (and no other) what to consume
    worker.wait_ready(ready.exists, timeout, "worker_ready signal")
    return worker


def client(pool: int = 4) -> Celery:
    """A blocking Celery client with the example's wire settings (rpc://, JSON)."""
    app = Celery("bench_client", broker=BROKER_URL, backend="rpc://")
    app.conf.update(task_default_queue=queue(), task_serializer="json", accept_content=["json"],
                    result_accept_content=["json"], broker_pool_limit=pool)
    return app


def seed_users(tmp: Path, count: int = SEED_USERS, timeout: float = 30.0) -> bytes:
    """Fill the (fresh) database with ``count`` users through the worker; return the JSON
    of ``list_users``, the payload hello world serves, written to ``tmp/payload.json``."""
    app = client()
    try:
        for i in range(1, count + 1):
            app.send_task(CREATE_USER, kwargs={"name": f"user{i}",
                                               "email": f"user{i}@example.com"}).get(timeout)
        users: Any = app.send_task(LIST_USERS).get(timeout)
    finally:
        # rpc://'s reply queue (named after the client's oid) outlives the client for a day
        # (x-expires) unless deleted.
        with contextlib.suppress(Exception):
            from bench.broker import delete_queue
            delete_queue(app.backend.binding.name)
        app.close()
    # Compact separators: the bytes the library's JSON responses have, so (a) serves exactly
    # what (d) does (the report's "bytes" column shows it).
    payload = json.dumps(users, separators=(",", ":")).encode()
    (tmp / "payload.json").write_bytes(payload)
    return payload
