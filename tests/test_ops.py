"""The operations routes against real services: ``/metrics`` (counted traffic through real
workers, OpenMetrics negotiation, multiprocess mode in a subprocess that forks), ``/healthz``
and ``/readyz`` (a healthy producer; the broker cut behind the fault proxy and restored; a
Redis result backend that is not there).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

from tcelery_req_handler import (
    Producer,
    routes,
    tcelery_health_routes,
    tcelery_metrics_routes,
    tcelery_routes,
    tcelery_status_routes,
)
from tcelery_req_handler import metrics as metrics_module
from tests import worker_app as w
from tests.sse import SSEClient
from tests.test_http import Server, body_of
from tests.workers import ROOT

pytest_plugins = ["tests.faults.fixtures"]

T = "tests.worker_app."
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# ------------------------------------------------------------------------------ helpers
def parse(text: str) -> Samples:
    """Every sample of a text exposition, by (sample name, sorted labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(server: Server, path: str = "/metrics") -> Samples:
    response = await server.fetch(path)
    assert response.code == 200, response.body
    return parse(response.body.decode())


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(0.05)


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture
async def server(producer: Producer) -> AsyncIterator[Server]:
    common = {"producer": producer}
    srv = Server(routes(
        tcelery_routes(r"/add/(\d+)/(\d+)", get_tasks=[w.add_ints], **common),
        tcelery_routes(r"/fail", get_tasks=[w.fail], **common),
        tcelery_routes(r"/slow", get_tasks=[w.sleep.s(2)], timeout=0.5, **common),
        tcelery_status_routes("/tasks", **common),
        tcelery_metrics_routes(),
        tcelery_health_routes(producer=producer),
    ))
    try:
        yield srv
    finally:
        srv.close()


# ------------------------------------------------------------------------------ /metrics
async def test_metrics_count_published_tasks_results_and_waits(server: Server,
                                                               producer: Producer) -> None:
    before = await scrape(server)
    for i in range(3):
        response = await server.fetch(f"/add/{i}/1")
        assert response.code == 200 and body_of(response) == i + 1
    assert (await server.fetch("/fail?message=boom")).code == 500
    assert (await server.fetch("/slow")).code == 504
    after = await scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    published = "tcelery_tasks_published_total"
    assert delta(published, task=T + "add_ints", outcome="confirmed") == 3
    assert delta(published, task=T + "fail", outcome="confirmed") == 1
    assert delta(published, task=T + "sleep", outcome="confirmed") == 1
    for outcome in ("refused", "unavailable", "overloaded"):
        assert delta(published, task=T + "add_ints", outcome=outcome) == 0
    received = "tcelery_results_received_total"
    assert delta(received, state="SUCCESS") == 3
    assert delta(received, state="FAILURE") == 1
    assert delta(received, state="TIMEOUT") == 1
    assert delta(received, state="REVOKED") == 0
    # the wait of each result that reached a ready state (not of the timeout), in seconds
    assert delta("tcelery_task_wait_seconds_count") == 4
    assert 0 < delta("tcelery_task_wait_seconds_sum") < 4 * 5
    assert delta("tcelery_task_wait_seconds_bucket", le="300.0") == 4
    assert value(after, "tcelery_task_wait_seconds_bucket", le="+Inf") == \
        value(after, "tcelery_task_wait_seconds_count")

    # The timed-out task still finishes (2 s): counted once, as its TIMEOUT, not again.
    await asyncio.sleep(2.5)
    gc.collect()

    async def nothing_awaited() -> bool:
        return value(await scrape(server), "tcelery_results_awaited") == 0
    await eventually(nothing_awaited, 5, "tcelery_results_awaited back to 0")
    last = await scrape(server)
    assert value(last, received, state="SUCCESS") == value(after, received, state="SUCCESS")
    assert value(last, "tcelery_task_wait_seconds_count") == \
        value(after, "tcelery_task_wait_seconds_count")
    assert producer.pending == 0


async def test_metrics_count_overloaded_sends(workers: Any) -> None:
    tight = Producer(w.app, max_pending=1, result_timeout=10)
    await tight.connect()
    srv = Server(routes(tcelery_metrics_routes()))
    try:
        before = await scrape(srv)
        first = await tight.apply_async(w.sleep, (0.5,))
        with pytest.raises(Exception, match="max_pending"):
            await tight.apply_async(w.add, (1, 2))
        assert await first.get(timeout=10) == 0.5
        after = await scrape(srv)
        key = "tcelery_tasks_published_total"
        assert value(after, key, task=T + "add", outcome="overloaded") - value(
            before, key, task=T + "add", outcome="overloaded") == 1
        assert value(after, key, task=T + "add", outcome="confirmed") == value(
            before, key, task=T + "add", outcome="confirmed")
    finally:
        srv.close()
        await tight.close()


async def test_event_streams_gauge_counts_open_streams(server: Server,
                                                       producer: Producer) -> None:
    gauge = "tcelery_event_streams_open"
    base = value(await scrape(server), gauge)
    result = await producer.apply_async(w.progress, (20,), {"delay": 0.1})
    client = await SSEClient.open(server.port, f"/tasks/{result.task_id}/events")
    try:
        assert client.status == 200
        assert await client.next_event(10) is not None
        assert value(await scrape(server), gauge) == base + 1
        events = await client.read_to_end(15)
        assert events and events[-1].type == "SUCCESS"
    finally:
        client.writer.close()

    async def closed() -> bool:
        return value(await scrape(server), gauge) == base
    await eventually(closed, 5, "the stream is no longer counted")

    # a client that leaves mid-stream is uncounted too
    result = await producer.apply_async(w.sleep, (3,))
    client = await SSEClient.open(server.port, f"/tasks/{result.task_id}/events")
    assert await client.next_event(10) is not None
    assert value(await scrape(server), gauge) == base + 1
    client.writer.close()
    await eventually(closed, 5, "a stream whose client left is no longer counted")
    assert await result.get(timeout=10) == 3


@pytest.mark.parametrize("accept", ["application/openmetrics-text; version=1.0.0",
                                    "application/openmetrics-text", ""])
async def test_metrics_negotiate_openmetrics_by_accept(server: Server, accept: str) -> None:
    assert (await server.fetch("/add/1/1")).code == 200
    response = await server.fetch("/metrics", headers={"Accept": accept} if accept else None)
    assert response.code == 200
    _encoder, content_type = choose_encoder(accept)
    assert response.headers["Content-Type"] == content_type
    text = response.body.decode()
    if accept:
        assert content_type.startswith("application/openmetrics-text")
        assert text.endswith("# EOF\n")
        assert "# TYPE tcelery_tasks_published counter" in text  # OpenMetrics: no _total
    else:
        assert not text.endswith("# EOF\n")
        assert "# TYPE tcelery_tasks_published_total counter" in text
    assert 'tcelery_tasks_published_total{outcome="confirmed",' \
           'task="tests.worker_app.add_ints"}' in text


async def test_metrics_restricted_by_name(server: Server) -> None:
    response = await server.fetch("/metrics?name[]=tcelery_results_awaited")
    names = {name for name, _labels in parse(response.body.decode())}
    assert names == {"tcelery_results_awaited"}


def test_importing_the_package_does_not_import_prometheus_client() -> None:
    code = ("import sys, tcelery_req_handler, tcelery_req_handler.web.ops; "
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_metrics_routes_without_prometheus_client_name_the_extra() -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["prometheus_client"] = None  # as if not installed
        from tcelery_req_handler import ConfigurationError, tcelery_metrics_routes
        try:
            tcelery_metrics_routes()
        except ConfigurationError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True)
    assert "pip install 'tcelery-req-handler[metrics]'" in out.stdout


_MULTIPROCESS_APP = """
import asyncio, os, sys
from prometheus_client import multiprocess
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application
from tcelery_req_handler import Producer, metrics, routes, tcelery_metrics_routes
from tests import worker_app as w

async def send(count):
    async with Producer(w.app, result_timeout=20) as producer:
        for i in range(count):
            assert await (await producer.apply_async(w.add, (i, 1))).get() == i + 1

pid = os.fork()
if pid == 0:  # a child process sends one task, and exits
    metrics.enable()
    asyncio.run(send(1))
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert status == 0, status
multiprocess.mark_process_dead(pid)

async def main():
    app = Application(routes(tcelery_metrics_routes()))
    await send(2)
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    print("PORT", port, "CHILD", pid, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed

asyncio.run(main())
"""


async def test_metrics_multiprocess_mode_adds_up_the_processes(
        workers: Any, tmp_path: Path) -> None:
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _MULTIPROCESS_APP], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.startswith("PORT"), (line, proc.poll())
        _, port, _, child = line.split()
        files = {p.name for p in multiproc_dir.iterdir()}
        assert any(name.startswith("counter_") for name in files), files
        assert not any(child in name for name in files if name.startswith("gauge_live")), \
            files  # mark_process_dead removed the child's live gauges
        srv = Server(routes())  # only for its HTTP client
        try:
            response = await srv.client.fetch(f"http://127.0.0.1:{port}/metrics",
                                              request_timeout=10)
        finally:
            srv.close()
        samples = parse(response.body.decode())
        published = "tcelery_tasks_published_total"
        assert value(samples, published, task=T + "add", outcome="confirmed") == 3
        assert value(samples, "tcelery_results_received_total", state="SUCCESS") == 3
        assert value(samples, "tcelery_task_wait_seconds_count") == 3
        assert value(samples, "tcelery_results_awaited") == 0
        assert value(samples, "tcelery_event_streams_open") == 0
        assert ("tcelery_reconnects_total", (("service", "broker"),)) in samples
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.returncode not in (0, -9):
            raise AssertionError(proc.stderr.read() if proc.stderr else proc.returncode)


# ------------------------------------------------------------------------------ health
async def test_healthz_and_readyz_with_a_healthy_producer(server: Server) -> None:
    response = await server.fetch("/healthz")
    assert response.code == 200 and body_of(response) == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"
    response = await server.fetch("/readyz")
    assert response.code == 200, response.body
    body = body_of(response)
    assert body["status"] == "ready"
    checks = body["checks"]
    assert set(checks) == {"broker", "reply_consumer", "result_backend"}
    assert checks["broker"]["ok"] is True and checks["broker"]["connected"] is True
    assert checks["reply_consumer"]["ok"] is True
    assert checks["reply_consumer"]["consuming"] is True
    assert checks["result_backend"]["ok"] is True and checks["result_backend"]["kind"] == "rpc"
    assert (await server.fetch("/healthz", "HEAD")).code == 200


async def test_readyz_connects_a_producer_not_connected_yet(workers: Any) -> None:
    lazy = Producer(w.app)
    srv = Server(routes(tcelery_health_routes(producer=lazy)))
    try:
        assert not lazy.connected
        response = await srv.fetch("/readyz")
        assert response.code == 200, response.body
        assert lazy.connected
    finally:
        srv.close()
        await lazy.close()


async def test_readyz_names_the_broker_while_it_is_cut_and_recovers(
        proxy: Any, make_producer: Callable[..., Producer]) -> None:
    producer = make_producer(proxy.url(), connect_timeout=1, reconnect_max_delay=0.3)
    await producer.connect()
    srv = Server(routes(tcelery_health_routes(producer=producer), tcelery_metrics_routes()))
    try:
        assert (await srv.fetch("/readyz")).code == 200
        reconnects = value(await scrape(srv), "tcelery_reconnects_total", service="broker")
        transport_reconnects = producer.transport.describe()["reconnects"]

        proxy.cut()
        bodies: list[Any] = []

        async def unready() -> bool:
            response = await srv.fetch("/readyz")
            bodies.append(body_of(response))
            return response.code == 503
        await eventually(unready, 5, "/readyz answers 503 once the broker is gone")
        body = bodies[-1]
        assert body["status"] == "unavailable"
        assert "broker" in body["failing"]
        assert body["checks"]["broker"]["ok"] is False
        assert "traceback" not in json.dumps(body).lower()
        assert (await srv.fetch("/healthz")).code == 200  # alive, only not ready

        proxy.restore()

        async def ready() -> bool:
            return (await srv.fetch("/readyz")).code == 200
        await eventually(ready, 10, "/readyz answers 200 again once the broker is back")
        assert (await srv.fetch("/healthz")).code == 200
        after = value(await scrape(srv), "tcelery_reconnects_total", service="broker")
        assert after >= reconnects + 1
        assert producer.transport.describe()["reconnects"] >= transport_reconnects + 1
    finally:
        srv.close()


async def test_readyz_names_the_result_backend_when_redis_is_unreachable(
        workers: Any) -> None:
    app = w.make_app(backend=f"redis://127.0.0.1:{closed_port()}/0")
    producer = Producer(app, connect_timeout=1)
    srv = Server(routes(tcelery_health_routes(producer=producer)))
    try:
        response = await srv.fetch("/readyz")
        assert response.code == 503, response.body
        body = body_of(response)
        assert body["status"] == "unavailable"
        assert body["failing"] == ["result_backend"]
        backend = body["checks"]["result_backend"]
        assert backend["ok"] is False and backend["kind"] == "redis"
        assert "error" in backend and "Traceback" not in backend["error"]
        assert body["checks"]["broker"]["ok"] is True
        assert (await srv.fetch("/healthz")).code == 200
    finally:
        srv.close()
        await producer.close()


async def test_readyz_without_an_installed_producer_is_503_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tcelery_req_handler import producer as producer_module

    monkeypatch.setattr(producer_module, "_default", None)
    srv = Server(routes(tcelery_health_routes()))
    try:
        response = await srv.fetch("/readyz")
        assert response.code == 503
        body = body_of(response)
        assert body["failing"] == ["producer"] and "setup_nonblocking_producer" in \
            body["checks"]["producer"]["error"]
    finally:
        srv.close()


def test_metrics_are_one_object_per_process() -> None:
    tcelery_metrics_routes()
    first = metrics_module.METRICS
    tcelery_metrics_routes("/other")
    assert metrics_module.METRICS is first is not None
