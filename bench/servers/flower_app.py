"""(c) The Celery app Flower serves: ``celery -A bench.servers.flower_app flower``.

Flower's task API calls ``self.capp.tasks[name].apply_async`` and, for ``/api/task/apply``,
waits with ``AsyncResult.get`` in a thread. With ``rpc://`` that wait never ends, so this app
(and the worker-side twin task ``bench.list_users_redis``) use Redis as result backend: Flower
with the backend it works with. The task body on the worker is the example's ``list_users``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from bench.config import BROKER_URL, LIST_USERS_REDIS, REDIS_URL, SLEEP_REDIS, queue

app = Celery("bench_flower", broker=BROKER_URL, backend=REDIS_URL)
app.conf.update(task_default_queue=queue(), task_serializer="json", result_serializer="json",
                accept_content=["json"], result_accept_content=["json"], result_expires=600,
                broker_connection_retry_on_startup=True)


@app.task(name=LIST_USERS_REDIS)  # type: ignore[untyped-decorator]
def list_users_redis(**filters: Any) -> Any:
    """A stub: the shared worker runs the real body (``bench.worker_app``)."""
    raise NotImplementedError("runs on the benchmark's worker")


@app.task(name=SLEEP_REDIS)  # type: ignore[untyped-decorator]
def sleep_redis(ms: float = 20) -> Any:
    """A stub of the latency test's task: the shared worker runs the real body."""
    raise NotImplementedError("runs on the benchmark's worker")
