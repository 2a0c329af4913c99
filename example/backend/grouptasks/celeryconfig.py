"""Celery settings of seed 002's system: RabbitMQ carries the tasks, Redis keeps the results.

Environment: ``BROKER_URL`` (default ``amqp://guest:guest@127.0.0.1:5672//``),
``RESULT_BACKEND`` (default ``redis://127.0.0.1:6379/0``), ``GROUPTASKS_QUEUE`` (default
``grouptasks``), ``GROUPTASKS_KEY_PREFIX`` (a ``global_keyprefix`` for every Redis key, empty
by default; the tests use one of their own).
"""

from __future__ import annotations

import os

broker_url: str = os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
result_backend: str = os.environ.get("RESULT_BACKEND", "redis://127.0.0.1:6379/0")
task_default_queue: str = os.environ.get("GROUPTASKS_QUEUE", "grouptasks")
result_backend_transport_options: dict[str, str] = (
    {"global_keyprefix": os.environ["GROUPTASKS_KEY_PREFIX"]}
    if os.environ.get("GROUPTASKS_KEY_PREFIX") else {})
task_serializer: str = "json"
result_serializer: str = "json"
accept_content: list[str] = ["json"]
result_accept_content: list[str] = ["json"]
# The seed's clients watch a task go PENDING → STARTED → SUCCESS.
task_track_started: bool = True
broker_connection_retry_on_startup: bool = True
