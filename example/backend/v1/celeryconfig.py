"""Celery settings of the example's v1 backend, loaded by ``backend.v1.app``.

``result_backend='rpc://'`` is what lets the Tornado app await results over its own reply
queue; JSON only, so neither side ever unpickles anything from the wire.
"""

from __future__ import annotations

import os

broker_url: str = os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
result_backend: str = "rpc://"
# EXAMPLE_QUEUE lets tests and benchmarks use a queue of their own.
task_default_queue: str = os.environ.get("EXAMPLE_QUEUE", "payment_default1")
task_serializer: str = "json"
result_serializer: str = "json"
accept_content: list[str] = ["json"]
result_accept_content: list[str] = ["json"]
# No STARTED message for the quick CRUD tasks: it would cost the worker a publish and the
# web process a decode per request, for a state nobody sees. The long ``report`` task turns
# it on for itself (``track_started=True``), next to its PROGRESS states.
task_track_started: bool = False
# Keep retrying while RabbitMQ starts up instead of giving up (and silence the 5.x warning).
broker_connection_retry_on_startup: bool = True
