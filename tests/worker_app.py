"""The Celery app the test session's real workers run. Queue names are unique to each run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from tests.workers import announce_ready

PREFIX = os.environ.get("TCELERY_TEST_PREFIX", "tcelery-test")
BROKER_URL = os.environ.get("TCELERY_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
#: The result backend (``rpc://`` unless a test starts a worker for another one) and, for
#: Redis, the ``global_keyprefix`` that keeps a run's keys apart from any other run's.
RESULT_BACKEND = os.environ.get("TCELERY_TEST_RESULT_BACKEND", "rpc://")
RESULT_KEYPREFIX = os.environ.get("TCELERY_TEST_RESULT_KEYPREFIX", "")
DEFAULT_QUEUE = f"{PREFIX}.default"
OTHER_QUEUE = f"{PREFIX}.other"


def make_app(prefix: str = PREFIX, backend: str = RESULT_BACKEND,
             keyprefix: str = RESULT_KEYPREFIX, *, current: bool = False) -> Celery:
    """The workers' app configuration, for any queue prefix and result backend: the tests
    build the producer side of a worker started with other ``TCELERY_TEST_*`` values with
    it (and send its tasks by name)."""
    celery_app = Celery("tcelery_tests", broker=BROKER_URL, backend=backend,
                        set_as_current=current)
    celery_app.conf.update(
        task_default_queue=f"{prefix}.default",
        task_track_started=True,
        task_routes={"tests.worker_app.where_am_i_routed": {"queue": f"{prefix}.other"}},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_expires=None,
    )
    if keyprefix:
        celery_app.conf.result_backend_transport_options = {"global_keyprefix": keyprefix}
    return celery_app


app = make_app(current=True)


worker_ready.connect(announce_ready)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


@app.task
def fail(message: str) -> None:
    raise ValueError(message)


@app.task
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(bind=True)
def progress(self: Any, steps: int, delay: float = 0.05) -> int:
    for i in range(steps):
        self.update_state(state="PROGRESS", meta={"current": i + 1, "total": steps})
        time.sleep(delay)
    return steps


@app.task(bind=True)
def where_am_i(self: Any, *_args: Any, **_kwargs: Any) -> dict[str, Any]:
    return {"hostname": self.request.hostname,
            "routing_key": (self.request.delivery_info or {}).get("routing_key")}


@app.task(bind=True)
def where_am_i_routed(self: Any) -> dict[str, Any]:
    """Routed to OTHER_QUEUE by ``task_routes``."""
    return {"hostname": self.request.hostname,
            "routing_key": (self.request.delivery_info or {}).get("routing_key")}


@app.task
def touch(path: str) -> str:
    """Leaves evidence on disk that a fire-and-forget task really ran."""
    Path(path).touch()
    return path


@app.task
def add_ints(x: str | int, y: str | int) -> int:
    """URL path groups arrive as strings."""
    return int(x) + int(y)


@app.task(bind=True)
def headers_seen(self: Any) -> dict[str, Any]:
    """What the worker decoded of a message's float headers."""
    return {"timelimit": list(self.request.timelimit or ()),
            "ratio": getattr(self.request, "ratio", None)}
