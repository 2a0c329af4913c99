"""What the tools that watch Celery's publishing expect of a publisher.

Celery's own ``send_task_message`` sends ``before_task_publish`` and ``after_task_publish``
(OpenTelemetry's Celery instrumentation, ddtrace and others hook them), Sentry patches
``apply_async`` to add its trace headers, and ``task_send_sent_event`` publishes a
``task-sent`` event (Flower lists the task as SENT). This producer publishes itself, so it does
the same, from the coroutine that awaits the broker's confirm (OpenTelemetry attaches its
context in the first signal and detaches it in the second: both must run in one task).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from celery import Celery, signals

from .messages import TaskMessage


def before_publish(app: Celery, message: TaskMessage) -> None:
    """Sentry's headers, then ``before_task_publish``, exactly as Celery sends it; receivers
    may change ``message.headers`` in place, and what they leave is published."""
    if "sentry_sdk" in sys.modules:
        _sentry_headers(message.headers)
    if signals.before_task_publish.receivers:
        signals.before_task_publish.send(
            sender=message.name, body=message.payload, exchange=message.exchange,
            routing_key=message.routing_key,
            declare=[message.declare] if message.declare is not None else [],
            headers=message.headers, properties=message.properties,
            retry_policy=dict(app.conf.task_publish_retry_policy or {}))


def after_publish(message: TaskMessage) -> None:
    """``after_task_publish``, once the broker confirmed the message."""
    if signals.after_task_publish.receivers:
        signals.after_task_publish.send(
            sender=message.name, body=message.payload, headers=message.headers,
            exchange=message.exchange, routing_key=message.routing_key)


def _sentry_headers(headers: dict[str, Any]) -> None:
    """What Sentry's Celery integration adds in ``apply_async``: ``sentry-trace``,
    ``baggage`` and ``sentry-task-enqueued-time`` (whole seconds here), at the top level and
    again under ``headers["headers"]``, where the worker side reads them (celery#4875)."""
    sentry_sdk: Any = sys.modules["sentry_sdk"]
    try:
        if not sentry_sdk.get_client().is_active():
            return
        traceparent = sentry_sdk.get_traceparent()
        baggage = sentry_sdk.get_baggage()
    except Exception:  # an old or half-initialised SDK: publish without its headers
        return
    # Whole seconds: pika cannot put a float in a header table (the publish would fail), and
    # Sentry's worker subtracts this from its clock, so it must stay a number.
    extra: dict[str, Any] = {"sentry-task-enqueued-time": int(time.time())}
    if traceparent:
        extra["sentry-trace"] = traceparent
    if baggage:
        existing = headers.get("baggage")
        extra["baggage"] = f"{existing},{baggage}" if existing else baggage
    headers.update(extra)
    nested = headers.get("headers")
    if not isinstance(nested, dict):
        nested = headers["headers"] = {}
    nested.update(extra)
