"""The fault workers' Celery app with a quorum queue (``celery -A tests.quorum_app``).

``tests.faults.fault_app`` with its default queue (``TCELERY_FAULT_QUEUE``) made a quorum
queue, in one of the two ways Celery (>= 5.5) offers, picked by ``TCELERY_QUORUM_MODE``:
``default-type`` sets ``task_default_queue_type="quorum"``; ``arguments`` lists the queue in
``task_queues`` with ``queue_arguments={"x-queue-type": "quorum"}``. The test process builds
its client app with :func:`configure` too, so both sides declare the same queue.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

from tests.faults import fault_app
from tests.faults.fault_app import QUEUE

MODES = ("default-type", "arguments")


def configure(app: Celery, mode: str, queue: str) -> Celery:
    """Make ``queue`` (the app's default queue) a quorum queue the ``mode`` way."""
    if mode == "default-type":
        app.conf.task_default_queue_type = "quorum"
    elif mode == "arguments":
        app.conf.task_queues = [Queue(queue, queue_arguments={"x-queue-type": "quorum"})]
    else:
        raise ValueError(f"TCELERY_QUORUM_MODE must be one of {MODES}, not {mode!r}")
    app.conf.task_default_queue = queue
    return app


app = fault_app.app
if os.environ.get("TCELERY_QUORUM_MODE"):  # a worker: the test process only imports configure
    configure(app, os.environ["TCELERY_QUORUM_MODE"], QUEUE)
