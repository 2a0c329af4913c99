"""Real Celery workers on each result backend the status routes read: rpc://, Redis, SQLite.

Each backend gets queues of its own (``<run prefix>-<kind>.default``), a worker of its own
(``tests.worker_app`` started with ``TCELERY_TEST_RESULT_BACKEND`` & co.) and, on the
producer side, a Celery app configured the same way (``worker_app.make_app``) that sends the
worker's tasks by name. Redis keys carry the run's ``global_keyprefix``; the SQLite file lives
in a temporary directory. :class:`BackendPool` removes all of it at the end: workers,
queues, exchanges, keys, files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from tcelery_req_handler import Producer
from tests import worker_app
from tests.workers import CeleryWorker

REDIS_URL = os.environ["TCELERY_TEST_REDIS"]  # checked at session start (conftest)
KINDS = ("rpc", "redis", "sqlite")


@dataclass
class Backend:
    """One result backend, its queues and its worker."""

    kind: str
    url: str
    prefix: str  # of the queue names: ``<prefix>.default``
    keyprefix: str = ""
    worker: CeleryWorker | None = None
    apps: list[Celery] = field(default_factory=list)

    @property
    def queue(self) -> str:
        return f"{self.prefix}.default"

    @property
    def persistent(self) -> bool:
        """Any process can read any task (Redis, SQLite); rpc:// knows only its own."""
        return self.kind != "rpc"

    @property
    def push(self) -> bool:
        """States are pushed (rpc://, Redis pub/sub), so none is missed; SQLite is polled."""
        return self.kind != "sqlite"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs for ``tests.worker_app.app`` to be this backend's app."""
        return {"TCELERY_TEST_PREFIX": self.prefix, "TCELERY_TEST_RESULT_BACKEND": self.url,
                "TCELERY_TEST_RESULT_KEYPREFIX": self.keyprefix}

    def app(self) -> Celery:
        """A producer-side app configured as the worker's is."""
        celery_app = worker_app.make_app(self.prefix, self.url, self.keyprefix)
        self.apps.append(celery_app)
        return celery_app

    def producer(self, **options: Any) -> Producer:
        options.setdefault("result_timeout", 20)
        options.setdefault("result_poll_interval", 0.1)
        return Producer(self.app(), **options)


class BackendPool:
    """Starts each backend's worker on first use; ``close()`` removes everything."""

    def __init__(self, run_prefix: str) -> None:
        self.run_prefix = run_prefix
        self.tmpdir = tempfile.mkdtemp(prefix="tcelery-status-")
        self.backends: dict[str, Backend] = {}

    def get(self, kind: str) -> Backend:
        backend = self.backends.get(kind)
        if backend is None:
            backend = self.backends[kind] = self._backend(kind)
            backend.worker = CeleryWorker(
                "tests.worker_app", [backend.queue], f"status-{kind}-{self.run_prefix}",
                concurrency=3, env=backend.env)
            backend.worker.start()
        return backend

    def _backend(self, kind: str) -> Backend:
        prefix = f"{self.run_prefix}-{kind}"
        if kind == "rpc":
            return Backend(kind, "rpc://", prefix)
        if kind == "redis":
            return Backend(kind, REDIS_URL, prefix, keyprefix=f"{self.run_prefix}:")
        if kind == "sqlite":
            path = os.path.join(self.tmpdir, "results.sqlite")
            return Backend(kind, f"db+sqlite:///{path}", prefix)
        raise ValueError(kind)

    def close(self) -> None:
        for backend in self.backends.values():
            if backend.worker is not None:
                backend.worker.stop()
        self._delete_queues()
        self._delete_keys()
        for backend in self.backends.values():
            for celery_app in backend.apps:
                with contextlib.suppress(Exception):
                    celery_app.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def _delete_queues(self) -> None:
        from tests.conftest import delete_queues_and_exchanges

        delete_queues_and_exchanges([name for backend in self.backends.values()
                                     for name in (backend.queue, f"{backend.prefix}.other")])

    def _delete_keys(self) -> None:
        backend = self.backends.get("redis")
        if backend is None:
            return
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{backend.keyprefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


def redis_keys(pattern: str) -> list[bytes]:
    """The Redis keys matching ``pattern`` (to check what a worker stored, and where)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        return list(client.scan_iter(match=pattern, count=1000))
    finally:
        client.close()
