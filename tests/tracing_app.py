"""The Celery app of tests/test_tracing.py's worker, instrumented as a traced app would be.

In each pool process (``worker_process_init``) it instruments Celery with OpenTelemetry,
exporting finished spans as JSON lines to ``$TCELERY_TRACING_DIR/spans.jsonl``; before the
pool forks (``celeryd_init``) it starts Sentry with its Celery integration and a transport
that writes each transaction's trace id to ``$TCELERY_TRACING_DIR/sentry.jsonl`` (nothing
leaves the machine). Without that variable
(the test process imports this module for the app and its tasks) nothing is set up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import celeryd_init, worker_process_init, worker_ready

from tests.workers import announce_ready

PREFIX = os.environ.get("TCELERY_TEST_PREFIX", "tcelery-test")
BROKER_URL = os.environ.get("TCELERY_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = f"{PREFIX}.tracing"
#: A queue no worker consumes: the tests read the raw messages published to it.
IDLE_QUEUE = f"{PREFIX}.tracing-idle"
#: A DSN nothing listens on; the transport below never uses it anyway.
SENTRY_DSN = "http://public@127.0.0.1:9/1"


def make_app(*, sent_events: bool = False) -> Celery:
    celery_app = Celery("tcelery_tracing", broker=BROKER_URL, backend="rpc://",
                        set_as_current=False)
    celery_app.conf.update(
        task_default_queue=QUEUE,
        task_send_sent_event=sent_events,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return celery_app


app = make_app()


@app.task(bind=True)
def traced(self: Any, x: int) -> dict[str, Any]:
    """What the worker saw of the message: its trace headers and the test's own one."""
    request = self.request
    return {"x": x, "traceparent": getattr(request, "traceparent", None),
            "mark": getattr(request, "tcelery_mark", None)}


# -- the worker side ------------------------------------------------------------------------
def _out(name: str) -> Path | None:
    directory = os.environ.get("TCELERY_TRACING_DIR")
    return Path(directory, name) if directory else None


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:  # one short line per write: atomic enough
        f.write(json.dumps(record) + "\n")


def _setup_opentelemetry(path: Path) -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class JsonLinesExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            for span in spans:
                context, parent = span.get_span_context(), span.parent
                _append(path, {
                    "name": span.name, "kind": span.kind.name,
                    "trace_id": f"{context.trace_id:032x}",
                    "span_id": f"{context.span_id:016x}",
                    "parent_span_id": f"{parent.span_id:016x}" if parent else None,
                    "ended": span.end_time is not None, "pid": os.getpid(),
                })
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter()))
    CeleryInstrumentor().instrument(tracer_provider=provider)


def _setup_sentry(path: Path) -> None:
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.transport import Transport

    class FileTransport(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            for item in envelope.items:
                if item.type != "transaction":
                    continue
                event = item.payload.json or {}
                trace = event.get("contexts", {}).get("trace", {})
                _append(path, {"transaction": event.get("transaction"),
                               "trace_id": trace.get("trace_id"),
                               "parent_span_id": trace.get("parent_span_id"),
                               "op": trace.get("op"), "pid": os.getpid()})

    sentry_sdk.init(dsn=SENTRY_DSN, transport=FileTransport, traces_sample_rate=1.0,
                    integrations=[CeleryIntegration()], default_integrations=False,
                    auto_enabling_integrations=False)


@worker_process_init.connect
def _instrument_opentelemetry(**_: Any) -> None:
    spans = _out("spans.jsonl")
    if spans is not None:
        _setup_opentelemetry(spans)


@celeryd_init.connect
def _instrument_sentry(**_: Any) -> None:
    """Before the pool forks, as Sentry documents for prefork: its integration wraps
    ``build_tracer``, and a pool process builds its tasks' tracers before it sends
    ``worker_process_init`` (so Sentry set up there never sees a task run)."""
    sentry = _out("sentry.jsonl")
    if sentry is not None:
        _setup_sentry(sentry)


worker_ready.connect(announce_ready)
