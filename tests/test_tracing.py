"""What tracing tools see of the producer, for real: OpenTelemetry's Celery instrumentation
and Sentry's Celery integration in this process and in a real prefork worker
(tests/tracing_app.py), the ``task-sent`` event on ``celeryev``, and the publish signals'
arguments compared with those Celery's own ``send_task`` sends, against real RabbitMQ.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import celery
import pika
import pytest
from celery import current_app, signals
from celery.events.state import State
from celery.utils.nodenames import anon_nodename
from celery.utils.time import utcoffset
from kombu import Queue

from tcelery_req_handler import Producer, TCeleryReqHandler, routes, tcelery_routes
from tcelery_req_handler.messages import build_message
from tests import tracing_app as t
from tests.conftest import blocking_connection, delete_queues_and_exchanges
from tests.test_http import Server, body_of
from tests.workers import CeleryWorker

pytestmark = pytest.mark.timeout(90)

TASK = t.traced.name
SENTRY_KEYS = ("sentry-trace", "baggage", "sentry-task-enqueued-time")


def test_the_message_body_and_sent_event_are_celerys() -> None:
    """``create_sent_event`` and ``chain`` in their own slots: the event is built when the app
    asks for it, and the body's ``chain`` is None, as Celery's own ``send_task`` makes it."""
    message = build_message(t.make_app(sent_events=True), TASK, (), {}, {}, "")
    assert message.sent_event is not None and message.sent_event["name"] == TASK
    assert message.payload[2]["chain"] is None
    assert build_message(t.make_app(), TASK, (), {}, {}, "").sent_event is None


# -- fixtures and helpers -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tracing_worker() -> Iterator[Path]:
    """A real prefork worker on the tracing queue, instrumented with OpenTelemetry and Sentry
    in each pool process; yields the directory its spans and transactions are written to."""
    out = Path(tempfile.mkdtemp(prefix="tcelery-tracing-"))
    worker = CeleryWorker("tests.tracing_app", [t.QUEUE], f"tracing-{t.PREFIX}",
                          concurrency=2, env={"TCELERY_TRACING_DIR": str(out)})
    try:
        worker.start()
        yield out
    finally:
        worker.stop()
        delete_queues_and_exchanges([t.QUEUE, t.IDLE_QUEUE])
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture
async def tproducer(tracing_worker: Path) -> AsyncIterator[Producer]:
    async with Producer(t.app, result_timeout=20) as p:  # connected, closed after
        yield p


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def wait_for(find: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = find()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        await asyncio.sleep(0.05)


async def raw_message(queue: str, task_id: str, timeout: float = 5.0
                      ) -> tuple[pika.BasicProperties, bytes]:
    """The message of ``task_id`` as published to ``queue`` (which no worker consumes)."""
    conn = blocking_connection()
    try:
        channel = conn.channel()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                await asyncio.sleep(0.05)
            elif (properties.headers or {}).get("id") == task_id:
                return properties, body
        raise AssertionError(f"task {task_id} not found in {queue} within {timeout}s")
    finally:
        conn.close()


def worker_spans(out: Path) -> list[dict[str, Any]]:
    return read_jsonl(out / "spans.jsonl")


# -- 1. OpenTelemetry ---------------------------------------------------------------------
@pytest.fixture
def otel() -> Iterator[tuple[Any, Any]]:
    """OpenTelemetry's Celery instrumentation in this process, spans kept in memory; the
    tracing app is Celery's current app meanwhile (the instrumentation finds the task in the
    current app's registry, and only then keeps its span open until ``after_task_publish``)."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = CeleryInstrumentor()
    previous = current_app._get_current_object()
    t.app.set_current()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield provider.get_tracer("tests.test_tracing"), exporter
    finally:
        instrumentor.uninstrument()
        previous.set_current()
        provider.shutdown()


async def test_opentelemetry_trace_from_tornado_handler_to_worker(
        otel: tuple[Any, Any], tproducer: Producer, tracing_worker: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.trace import SpanKind

    tracer, exporter = otel

    class TracedHandler(TCeleryReqHandler):
        async def run_tasks(self, verb: str, path_args: Any, path_kwargs: Any) -> None:
            with tracer.start_as_current_span(f"HTTP {verb.upper()} /traced",
                                              kind=SpanKind.SERVER):
                await super().run_tasks(verb, path_args, path_kwargs)

    caplog.set_level(logging.WARNING)
    server = Server(routes(tcelery_routes(r"/traced/(?P<x>\d+)", get_tasks=[t.traced],
                                          handler=TracedHandler, producer=tproducer)))
    try:
        response = await server.fetch("/traced/5")
    finally:
        server.close()
    assert response.code == 200, response.body
    body = body_of(response)

    spans = {span.name: span for span in exporter.get_finished_spans()}
    http, publish = spans["HTTP GET /traced"], spans[f"apply_async/{TASK}"]
    trace_id = f"{http.context.trace_id:032x}"
    assert publish.kind is SpanKind.PRODUCER
    assert publish.context.trace_id == http.context.trace_id
    assert publish.parent is not None and publish.parent.span_id == http.context.span_id
    # Ended, in after_task_publish: after the confirm, before the handler's span.
    assert publish.end_time is not None and publish.start_time < publish.end_time
    assert publish.end_time <= http.end_time
    publish_id = f"{publish.context.span_id:016x}"
    assert body["traceparent"].startswith(f"00-{trace_id}-{publish_id}-")  # what it got

    run = await wait_for(lambda: [s for s in worker_spans(tracing_worker)
                                  if s["name"] == f"run/{TASK}" and s["trace_id"] == trace_id],
                         "worker span of this trace")
    assert len(run) == 1 and run[0]["kind"] == "CONSUMER" and run[0]["ended"]
    assert run[0]["parent_span_id"] == publish_id
    assert run[0]["pid"] != os.getpid()
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "Failed to detach context" in m], messages
    assert not [m for m in messages if "no existing span found" in m], messages


# -- 2. Sentry ------------------------------------------------------------------------------
@pytest.fixture
def sentry() -> Iterator[list[Any]]:
    """Sentry with its Celery integration in this process; envelopes are kept in memory
    (the DSN points nowhere, and no transport but this one is used)."""
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.transport import Transport

    envelopes: list[Any] = []

    class MemoryTransport(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            envelopes.append(envelope)

    sentry_sdk.init(dsn=t.SENTRY_DSN, transport=MemoryTransport, traces_sample_rate=1.0,
                    integrations=[CeleryIntegration()], default_integrations=False,
                    auto_enabling_integrations=False)
    try:
        yield envelopes
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)  # inactive again, for other tests


async def test_sentry_trace_continues_in_the_worker(
        sentry: list[Any], tproducer: Producer, tracing_worker: Path) -> None:
    import sentry_sdk

    with sentry_sdk.start_transaction(name="tcelery-test", op="test") as transaction:
        result = await tproducer.apply_async(t.traced, (1,))
        await result.get(timeout=20)
        idle = await tproducer.apply_async(t.traced, (2,), reply=False, queue=t.IDLE_QUEUE)
    trace_id = transaction.trace_id
    assert [e for e in sentry if any(i.type == "transaction" for i in e.items)]

    properties, _ = await raw_message(t.IDLE_QUEUE, idle.task_id)
    headers = properties.headers
    for where in (headers, headers["headers"]):  # top-level, and nested for the worker
        assert where["sentry-trace"].startswith(f"{trace_id}-"), where
        assert f"sentry-trace_id={trace_id}" in where["baggage"]
        assert abs(float(where["sentry-task-enqueued-time"]) - time.time()) < 30
    parent_span_id = headers["sentry-trace"].split("-")[1]

    records = await wait_for(
        lambda: [r for r in read_jsonl(tracing_worker / "sentry.jsonl")
                 if r["transaction"] == TASK and r["trace_id"] == trace_id],
        "worker transaction continuing this trace")
    assert len(records) == 1 and records[0]["op"] == "queue.task.celery"
    assert records[0]["pid"] != os.getpid()
    # Its parent is the transaction's span, which both messages carried.
    assert records[0]["parent_span_id"] == parent_span_id == transaction.span_id
    assert headers["headers"]["sentry-trace"] == headers["sentry-trace"]


async def test_no_sentry_headers_without_an_active_client(tproducer: Producer) -> None:
    import sentry_sdk

    assert not sentry_sdk.get_client().is_active()
    sent = await tproducer.apply_async(t.traced, (3,), reply=False, queue=t.IDLE_QUEUE)
    properties, _ = await raw_message(t.IDLE_QUEUE, sent.task_id)
    headers = properties.headers
    assert not [k for k in SENTRY_KEYS if k in headers], headers
    assert "headers" not in headers or not [k for k in SENTRY_KEYS if k in headers["headers"]]


# -- 3. task-sent events ------------------------------------------------------------------
class EventQueue:
    """A queue of our own bound to the ``celeryev`` topic exchange with ``task.#``."""

    def __init__(self) -> None:
        self.conn = blocking_connection()
        self.channel = self.conn.channel()
        # As Celery declares it (kombu's defaults: durable, not auto-deleted).
        self.channel.exchange_declare("celeryev", "topic", durable=True)
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(self.queue, "celeryev", routing_key="task.#")

    async def events(self, task_id: str, timeout: float) -> list[tuple[Any, dict[str, Any]]]:
        """Every ``task-sent`` event of ``task_id`` that arrives within ``timeout``."""
        found: list[tuple[Any, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, _, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                await asyncio.sleep(0.05)
                continue
            event = json.loads(body)
            if event.get("uuid") == task_id and event.get("type") == "task-sent":
                found.append((method, event))
        return found

    def close(self) -> None:
        self.channel.queue_delete(self.queue)
        self.conn.close()


@pytest.fixture
def event_queue() -> Iterator[EventQueue]:
    queue = EventQueue()
    try:
        yield queue
    finally:
        queue.close()


async def test_task_sent_event(event_queue: EventQueue, tracing_worker: Path) -> None:
    events_app = t.make_app(sent_events=True)
    async with Producer(events_app, result_timeout=20) as producer:
        before = time.time()
        sent = await producer.apply_async(t.traced, (3, 4), {"k": "v"}, reply=False,
                                          queue=t.IDLE_QUEUE)
        (method, event), = await event_queue.events(sent.task_id, 1.0)
        # A worker runs such a task as any other (its event's queue is the worker's).
        ran = await producer.apply_async(t.traced, (6,))
        await ran.get(timeout=20)
        assert ran.status == "SUCCESS" and ran.result["x"] == 6
        (_, ran_event), = await event_queue.events(ran.task_id, 1.0)
        assert ran_event["queue"] == ran_event["routing_key"] == t.QUEUE
    assert method.exchange == "celeryev" and method.routing_key == "task.sent"
    assert event["type"] == "task-sent"
    assert event["uuid"] == sent.task_id and event["name"] == TASK
    assert event["args"] == "(3, 4)" and event["kwargs"] == "{'k': 'v'}"
    assert (event["queue"], event["exchange"], event["routing_key"]) == \
        (t.IDLE_QUEUE, "", t.IDLE_QUEUE)
    assert event["hostname"] == anon_nodename() and event["pid"] == os.getpid()
    assert isinstance(event["clock"], int) and event["clock"] > 0
    assert abs(event["timestamp"] - before) < 10 and event["utcoffset"] == utcoffset()

    # The same fields, of the same types, as the event Celery's own send_task publishes.
    celery_app = t.make_app(sent_events=True)
    try:
        with celery_app.connection_for_write() as conn:
            theirs = celery_app.send_task(TASK, (3, 4), {"k": "v"}, queue=t.IDLE_QUEUE,
                                          connection=conn)
        (_, celery_event), = await event_queue.events(theirs.id, 2.0)
    finally:
        delete_queues_and_exchanges([celery_app.thread_oid])
        celery_app.close()
    assert {k: type(v) for k, v in event.items()} == \
        {k: type(v) for k, v in celery_event.items()}
    same = ("type", "name", "args", "kwargs", "queue", "exchange", "routing_key", "hostname",
            "pid", "utcoffset", "eta", "expires", "retries", "parent_id")
    assert {k: event[k] for k in same} == {k: celery_event[k] for k in same}

    # What Celery's event receiver and state (Flower's, too) make of it: a task recorded as
    # sent (Celery's State calls that state PENDING, with ``sent`` set), as from Celery's.
    receiver, state = events_app.events.Receiver(None), State()
    for each in (event, celery_event):
        kind, received = receiver.event_from_message(dict(each))
        assert kind == "task-sent"
        state.event(received)
    ours_seen, theirs_seen = state.tasks[sent.task_id], state.tasks[theirs.id]
    for seen in (ours_seen, theirs_seen):
        assert seen.state == "PENDING" and seen.sent == pytest.approx(time.time(), abs=30)
        assert seen.name == TASK and seen.args == "(3, 4)" and seen.kwargs == "{'k': 'v'}"
    assert ours_seen.info().keys() == theirs_seen.info().keys()

    # With task_send_sent_event off (the tracing app's default): no event.
    async with Producer(t.app, result_timeout=20) as producer:
        quiet = await producer.apply_async(t.traced, (5,), reply=False, queue=t.IDLE_QUEUE)
        assert await event_queue.events(quiet.task_id, 0.5) == []


# -- 4. the publish signals' arguments ------------------------------------------------------
class SignalCapture:
    """Receivers of both signals for one task: what they got, and a header they add."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    def before(self, **kwargs: Any) -> None:
        if kwargs.get("sender") == TASK:
            self.calls.append(("before", kwargs, dict(kwargs["headers"])))
            kwargs["headers"]["tcelery_mark"] = f"mark-{kwargs['headers']['id']}"
            kwargs["properties"]["priority"] = 3  # published too, as by Celery

    def after(self, **kwargs: Any) -> None:
        if kwargs.get("sender") == TASK:
            self.calls.append(("after", kwargs, dict(kwargs["headers"])))

    def pop(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """The one publish captured since the last pop: before's kwargs, the headers as
        before got them, after's kwargs."""
        (b, before, headers), (a, after, _) = self.calls
        assert (b, a) == ("before", "after")
        self.calls.clear()
        return before, headers, after


@pytest.fixture
def capture() -> Iterator[SignalCapture]:
    capture = SignalCapture()
    signals.before_task_publish.connect(capture.before, weak=False)
    signals.after_task_publish.connect(capture.after, weak=False)
    try:
        yield capture
    finally:
        signals.before_task_publish.disconnect(capture.before)
        signals.after_task_publish.disconnect(capture.after)


def _types(kwargs: dict[str, Any]) -> dict[str, type]:
    return {key: type(value) for key, value in kwargs.items()}


async def test_publish_signals_match_celerys(capture: SignalCapture, tproducer: Producer
                                             ) -> None:
    # Celery's own Task.apply_async (so app.send_task, over a kombu connection) ...
    try:
        with t.app.connection_for_write() as conn:
            theirs = t.traced.apply_async((7,), {}, queue=t.IDLE_QUEUE, connection=conn)
        c_before, c_headers, c_after = capture.pop()
    finally:
        delete_queues_and_exchanges([t.app.thread_oid])  # its rpc:// reply queue
    # ... and ours, of the same task to the same queue.
    ours = await tproducer.apply_async(t.traced, (7,), {}, reply=False, queue=t.IDLE_QUEUE)
    o_before, o_headers, o_after = capture.pop()

    # retry_policy: Celery >= 5.7 sends the policy it publishes with (task_publish_retry_policy
    # merged with the caller's), as we do; Celery <= 5.6 sends the caller's own argument, None
    # here. On those, ours must still be what 5.7 would send.
    if celery.VERSION < (5, 7):
        assert c_before["retry_policy"] is None
        assert o_before["retry_policy"] == dict(t.app.conf.task_publish_retry_policy or {})
        c_before = {**c_before, "retry_policy": o_before["retry_policy"]}
    assert _types(o_before) == _types(c_before)
    assert _types(o_after) == _types(c_after)
    assert set(o_before) == {"signal", "sender", "body", "exchange", "routing_key", "declare",
                             "headers", "properties", "retry_policy"}
    assert set(o_after) == {"signal", "sender", "body", "headers", "exchange", "routing_key"}
    for key in ("sender", "exchange", "routing_key", "retry_policy"):
        assert o_before[key] == c_before[key], key
    assert [type(x) for x in o_before["body"]] == [type(x) for x in c_before["body"]]
    assert o_before["body"][:2] == c_before["body"][:2] == ((7,), {})
    assert set(o_before["body"][2]) == set(c_before["body"][2])
    assert [(type(q), q.name) for q in o_before["declare"]] == \
        [(type(q), q.name) for q in c_before["declare"]] == [(Queue, t.IDLE_QUEUE)]
    assert set(o_headers) == set(c_headers)
    assert _types(o_headers) == _types(c_headers)
    # Celery's properties also hold the task's unset exec options (priority, mandatory,
    # immediate: None); ours hold what is published (delivery_mode, content type). Anything
    # Celery sets, we set.
    for properties, task_id in ((o_before["properties"], ours.task_id),
                                (c_before["properties"], theirs.id)):
        assert properties["correlation_id"] == task_id
    assert {k for k, v in c_before["properties"].items() if v is not None} <= \
        set(o_before["properties"])
    for key in ("exchange", "routing_key", "body"):
        assert o_after[key] == o_before[key] and c_after[key] == c_before[key]

    # The headers (and properties) the receivers got are what was published, mark included.
    for before, after, task_id in ((c_before, c_after, theirs.id),
                                   (o_before, o_after, ours.task_id)):
        assert after["headers"] is before["headers"]
        assert after["headers"]["tcelery_mark"] == f"mark-{task_id}"
        properties, _ = await raw_message(t.IDLE_QUEUE, task_id)
        assert properties.headers["tcelery_mark"] == f"mark-{task_id}"
        assert properties.priority == 3

    # ... and a worker's task sees it as self.request.tcelery_mark.
    result = await tproducer.apply_async(t.traced, (8,))
    await result.get(timeout=20)
    assert result.result["mark"] == f"mark-{result.task_id}"

    assert o_before["body"][2] == c_before["body"][2]  # callbacks, errbacks, chain, chord
