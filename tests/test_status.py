"""The status routes over HTTP: GET a task's state (``?wait``), follow it as Server-Sent
Events, revoke it; fire-and-forget routes pointing at them; results from rpc://, Redis and
SQLite (polled). Everything real: RabbitMQ, Redis, ``celery worker`` processes (one per
result backend, ``tests/backends.py``), Tornado servers in this process and in subprocesses
(``tests/status_app.py``), and an SSE client that parses the stream (``tests/sse.py``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.web import HTTPError

from tcelery_req_handler import (
    ConfigurationError,
    Producer,
    UnknownTask,
    routes,
    setup_nonblocking_producer,
    tcelery_async_routes,
    tcelery_routes,
    tcelery_status_routes,
)
from tcelery_req_handler import producer as producer_module
from tests import worker_app
from tests.backends import KINDS, Backend, BackendPool, redis_keys
from tests.conftest import BROKER_URL
from tests.sse import Event, SSEClient, SSEParser
from tests.test_http import Server, body_of
from tests.workers import ROOT

T = "tests.worker_app."
WAIT_LIMIT = 5  # the status routes' ``timeout``: the longest ``?wait``
STATUS_KEYS = {"task_id", "state", "ready", "successful", "result", "error", "progress",
               "date_done"}


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pool() -> Iterator[BackendPool]:
    backends = BackendPool(f"{worker_app.PREFIX}-st")
    try:
        yield backends
    finally:
        backends.close()


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, pool: BackendPool) -> Backend:
    return pool.get(request.param)


@pytest.fixture
async def prod(backend: Backend) -> AsyncIterator[Producer]:
    async with backend.producer() as producer:  # connected, closed after
        yield producer


@pytest.fixture
async def server(prod: Producer) -> AsyncIterator[Server]:
    srv = Server(routes(
        tcelery_status_routes("/tasks", producer=prod, timeout=WAIT_LIMIT),
        tcelery_async_routes(r"/fire/add", post_tasks=[T + "add"], producer=prod),
        tcelery_async_routes(r"/fire/two", post_tasks=[T + "add", T + "echo"], producer=prod),
    ), compress_response=True)
    try:
        yield srv
    finally:
        srv.close()


# ------------------------------------------------------------------------------- helpers
async def send(prod: Producer, task: str, *args: Any, **options: Any) -> str:
    """Fire a task as a fire-and-forget route of an app with status routes does."""
    result = await prod.send_task(T + task, args, reply=False, record=True, **options)
    return result.task_id


async def status(server: Server, path: str, method: str = "GET",
                 **kwargs: Any) -> tuple[HTTPResponse, Any]:
    response = await server.fetch(path, method, **kwargs)
    return response, body_of(response)


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str,
                interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(interval)


async def state_is(server: Server, task_id: str, *states: str, timeout: float = 10) -> Any:
    """The status body, once the task is in one of ``states``."""
    async def check() -> Any:
        response, body = await status(server, f"/tasks/{task_id}")
        assert response.code == 200, body
        return body if body["state"] in states else None
    return await until(check, timeout, f"task {task_id} in {states}")


def expect_status(body: Any, task_id: str, state: str, **fields: Any) -> None:
    """The status JSON, checked whole: ``fields`` override what ``state`` implies."""
    ready = state in ("SUCCESS", "FAILURE", "REVOKED")
    expected = {"task_id": task_id, "state": state, "ready": ready,
                "successful": state == "SUCCESS", "result": None, "error": None,
                "progress": None, "date_done": body.get("date_done") if ready else None,
                **fields}
    assert body == expected
    if ready:
        assert datetime.fromisoformat(body["date_done"]).year >= 2024


def followers(prod: Producer, task_id: str) -> int:
    """How many event streams follow the live result of ``task_id`` in ``prod``."""
    live = prod.results.get(task_id)
    return 0 if live is None else len(live._followers or ())


async def freed(prod: Producer, timeout: float = 8.0) -> None:
    """Nothing is awaited any more: no live result, no subscribed channel, no poller."""
    async def check() -> bool:
        gc.collect()
        assert prod.source is not None
        described = prod.source.describe()
        return prod.pending == 0 and described.get("watched", 0) == 0 \
            and described.get("polled", 0) == 0
    await until(check, timeout, "the producer let go of every task", interval=0.1)


def check_stream_headers(client: SSEClient) -> None:
    assert client.status == 200
    assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert client.headers["cache-control"] == "no-cache"
    assert client.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in client.headers  # the app compresses, never a stream


def check_events(client: SSEClient, task_id: str, first_id: int = 1) -> list[Any]:
    """The stream's ``retry``, then every event it sent: ids count up by one, each event is
    named after its state. Returns their data, in order."""
    assert client.parser.retry == 3000
    events = client.events
    assert [e.id for e in events] == [str(i) for i in range(first_id,
                                                            first_id + len(events))]
    datas = [e.json() for e in events]
    for event, data in zip(events, datas, strict=True):
        assert event.type == data["state"]
        assert set(data) == STATUS_KEYS and data["task_id"] == task_id
    return datas


# ----------------------------------------------------------------------- the SSE parser
def test_sse_parser_follows_the_spec() -> None:
    parser = SSEParser()
    pieces = [b"retry: 1x\nretry: 250\n: hi\n", b"id: 1\nevent: A\nda", b"ta: x\r",
              b"\ndata:y\r\r", b"data\n\n\n", "id: 2\r\ndata: \u00e9".encode()[:-1],
              "\u00e9".encode()[-1:] + b"\r\n\r\nevent: B\n\n"]
    events = [event for piece in pieces for event in parser.feed(piece)]
    assert events == [Event("A", "x\ny", "1"), Event("message", "", "1"),
                      Event("message", "\u00e9", "2")]
    assert parser.retry == 250 and parser.comments == ["hi"]
    assert parser.feed(b"data: z", final=True) == []  # no blank line: not dispatched


# --------------------------------------------------------------------------------- GET
async def test_get_finished_success(server: Server, prod: Producer) -> None:
    task_id = await send(prod, "add", 2, 3)
    response, body = await status(server, f"/tasks/{task_id}?wait={WAIT_LIMIT}")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/json; charset=UTF-8"
    expect_status(body, task_id, "SUCCESS", result=5)
    _, again = await status(server, f"/tasks/{task_id}")  # read again, without waiting
    assert again == body


async def test_get_finished_failure(server: Server, prod: Producer) -> None:
    task_id = await send(prod, "fail", "boom </script>")
    response, body = await status(server, f"/tasks/{task_id}?wait=5")
    assert response.code == 200  # the status of a failed task, not a failed request
    expect_status(body, task_id, "FAILURE",
                  error={"type": "ValueError", "message": "boom </script>"})
    assert b"</script>" not in response.body


async def test_get_progress_while_running(server: Server, prod: Producer) -> None:
    task_id = await send(prod, "progress", 3, 0.8)
    body = await state_is(server, task_id, "PROGRESS")
    current = body["progress"]["current"]
    assert 1 <= current <= 3
    expect_status(body, task_id, "PROGRESS", progress={"current": current, "total": 3})
    _, body = await status(server, f"/tasks/{task_id}?wait=5")
    expect_status(body, task_id, "SUCCESS", result=3)


async def test_wait_times_out_answering_the_current_state(server: Server, prod: Producer,
                                                         backend: Backend) -> None:
    task_id = await send(prod, "sleep", 2.5)
    started = await state_is(server, task_id, "STARTED")
    assert backend.worker is not None  # STARTED's meta says where it runs
    assert started["progress"]["hostname"] == f"{backend.worker.name}@{socket.gethostname()}"
    t0 = time.monotonic()
    response, body = await status(server, f"/tasks/{task_id}?wait=0.5")
    elapsed = time.monotonic() - t0
    assert response.code == 200 and 0.45 <= elapsed < 1.5, elapsed
    expect_status(body, task_id, "STARTED", progress=started["progress"])
    t0 = time.monotonic()
    _, body = await status(server, f"/tasks/{task_id}?wait=5")  # until ready, not 5 s
    assert time.monotonic() - t0 < 4.5
    expect_status(body, task_id, "SUCCESS", result=2.5)


@pytest.mark.parametrize("backend", ["rpc"], indirect=True)
@pytest.mark.parametrize("wait", ["0", "-1", "5.01", "31", "abc", "nan", "inf", "", "1e999"])
async def test_bad_wait_is_400_before_any_lookup(server: Server, wait: str) -> None:
    # On rpc:// the id is unknown (a 404), but the bad query is answered first.
    response, body = await status(server, f"/tasks/never-sent?wait={wait}")
    assert response.code == 400
    assert body == {"error": {"type": "BadRequest", "argument": "wait", "message":
                              "wait must be a number of seconds above 0 and at most 5"}}


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_wait_at_the_limit_is_accepted(server: Server, prod: Producer) -> None:
    task_id = await send(prod, "add", 1, 1)
    _, body = await status(server, f"/tasks/{task_id}?wait={WAIT_LIMIT}")
    expect_status(body, task_id, "SUCCESS", result=2)


BAD_IDS = ["a" * 256, "a%20b", "a*b", "%C3%A9t%C3%A9", "x%3Cscript%3E", "a+b", "%00", "a%2Fb"]


async def test_bad_task_ids_are_400_on_every_route(server: Server) -> None:
    for bad in BAD_IDS:
        for method, path in (("GET", f"/tasks/{bad}"), ("GET", f"/tasks/{bad}/events"),
                             ("DELETE", f"/tasks/{bad}")):
            response, body = await status(server, path, method)
            assert response.code == 400, (method, path, body)
            assert body["error"]["type"] == "BadRequest"
            assert body["error"]["message"] == \
                "not a task id: at most 255 characters from A-Z a-z 0-9 _ . : -", body
    response, body = await status(server, "/tasks/%FF")  # not UTF-8: Tornado's own 400
    assert response.code == 400 and body["error"]["type"] == "BadRequest"


async def test_unknown_id_is_404_on_rpc_and_pending_elsewhere(server: Server,
                                                              backend: Backend) -> None:
    for task_id in ("a" * 255, "no.such:task-id_0"):
        for path in (f"/tasks/{task_id}", f"/tasks/{task_id}?wait=0.2"):
            response, body = await status(server, path)
            if backend.persistent:
                assert response.code == 200
                expect_status(body, task_id, "PENDING")
            else:
                assert response.code == 404
                assert body["task_id"] == task_id
                assert body["error"]["type"] == "UnknownTask"
                assert task_id in body["error"]["message"]
    if not backend.persistent:
        response, body = await status(server, "/tasks/no-such-task/events")
        assert response.code == 404 and body["error"]["type"] == "UnknownTask"


# --------------------------------------------------------------------------------- SSE
async def test_events_follow_every_state_to_success(server: Server, prod: Producer,
                                                    backend: Backend) -> None:
    steps, delay = (3, 0.15) if backend.push else (4, 0.4)
    task_id = await send(prod, "progress", steps, delay, countdown=1)
    client = await SSEClient.open(server.port, f"/tasks/{task_id}/events",
                                  {"Accept-Encoding": "gzip"})
    try:
        check_stream_headers(client)
        first = await client.next_event(5)
        assert first is not None and first.type == "PENDING"  # the state when it opened
        assert followers(prod, task_id) == 1
        await client.read_to_end(15)
    finally:
        await client.close()
    assert client.ended  # the server closed the stream after the ready state
    datas = check_events(client, task_id)
    states = [data["state"] for data in datas]
    currents = [data["progress"]["current"] for data in datas if data["state"] == "PROGRESS"]
    if backend.push:  # every state is pushed: none can be missed
        assert states == ["PENDING", "STARTED", *["PROGRESS"] * steps, "SUCCESS"]
        assert currents == list(range(1, steps + 1))
    else:  # polled: a quick state may fall between two reads, the order never changes
        assert states[0] == "PENDING" and states[-1] == "SUCCESS"
        assert set(states[1:-1]) <= {"STARTED", "PROGRESS"}
        assert "STARTED" not in states[states.index("PROGRESS"):]
        assert currents and currents == sorted(set(currents))
        assert all(1 <= c <= steps for c in currents)
    for data in datas[1:-1]:
        assert data["result"] is None and not data["ready"] and data["progress"]
    expect_status(datas[-1], task_id, "SUCCESS", result=steps)
    assert followers(prod, task_id) == 0
    await freed(prod)


async def test_events_of_a_failure_end_with_its_error(server: Server, prod: Producer) -> None:
    task_id = await send(prod, "fail", "nope", countdown=0.5)
    client = await SSEClient.open(server.port, f"/tasks/{task_id}/events")
    try:
        await client.read_to_end(10)
    finally:
        await client.close()
    datas = check_events(client, task_id)
    assert datas[0]["state"] == "PENDING"
    expect_status(datas[-1], task_id, "FAILURE", error={"type": "ValueError",
                                                        "message": "nope"})


async def test_last_event_id_on_a_ready_task_is_204(server: Server, prod: Producer) -> None:
    task_id = await send(prod, "add", 1, 1)
    await state_is(server, task_id, "SUCCESS")
    client = await SSEClient.open(server.port, f"/tasks/{task_id}/events",
                                  {"Last-Event-ID": "3"})
    assert client.status == 204 and client.body == b"" and client.ended
    await client.close()
    # A first connection (no Last-Event-ID) gets the ready state as its one event.
    client = await SSEClient.open(server.port, f"/tasks/{task_id}/events")
    try:
        check_stream_headers(client)
        await client.read_to_end(5)
    finally:
        await client.close()
    [data] = check_events(client, task_id)
    expect_status(data, task_id, "SUCCESS", result=2)


async def test_a_client_that_hangs_up_is_let_go_and_can_resume(
        server: Server, prod: Producer, backend: Backend) -> None:
    task_id = await send(prod, "progress", 5, 0.5)
    client = await SSEClient.open(server.port, f"/tasks/{task_id}/events")
    try:
        event = await client.next_event(10)
        while event is not None and event.type != "PROGRESS":
            event = await client.next_event(10)
        assert event is not None and followers(prod, task_id) == 1
    finally:
        await client.close()  # mid-stream, the task still running

    async def let_go() -> bool:
        return followers(prod, task_id) == 0
    await until(let_go, 3, "the stream stopped following the task")
    await freed(prod, timeout=3)  # the task runs on, nobody holds it: not watched any more
    assert prod.source is not None and prod.source.healthy

    # The EventSource reconnects with the last id it saw: the count goes on from there.
    last = int(event.id or 0)
    client = await SSEClient.open(server.port, f"/tasks/{task_id}/events",
                                  {"Last-Event-ID": str(last)})
    try:
        check_stream_headers(client)
        await client.read_to_end(10)
    finally:
        await client.close()
    datas = check_events(client, task_id, first_id=last + 1)
    assert datas[0]["state"] == "PROGRESS"  # the current state, first
    expect_status(datas[-1], task_id, "SUCCESS", result=5)
    _, body = await status(server, f"/tasks/{task_id}")  # and the server keeps serving
    expect_status(body, task_id, "SUCCESS", result=5)
    await freed(prod)


class _FastHeartbeat:
    heartbeat = 0.2


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_keep_alive_comments_and_stream_timeout(prod: Producer) -> None:
    srv = Server(tcelery_status_routes("/tasks", handler=_FastHeartbeat, producer=prod,
                                       stream_timeout=1.2))
    try:
        task_id = await send(prod, "sleep", 3)
        t0 = time.monotonic()
        client = await SSEClient.open(srv.port, f"/tasks/{task_id}/events")
        try:
            check_stream_headers(client)
            events = await client.read_to_end(5)
        finally:
            await client.close()
        elapsed = time.monotonic() - t0
    finally:
        srv.close()
    assert 1.1 <= elapsed < 2.5, elapsed  # closed at stream_timeout, the task not ready
    assert [e.type for e in events] in (["PENDING"], ["STARTED"], ["PENDING", "STARTED"])
    assert 3 <= client.parser.comments.count("keep-alive") <= 7, client.parser.comments
    await freed(prod)


# ------------------------------------------------------------------------------ DELETE
async def test_revoke_a_waiting_task_it_never_runs(server: Server, prod: Producer,
                                                   tmp_path: Path) -> None:
    evidence = tmp_path / "ran"
    task_id = await send(prod, "touch", str(evidence), countdown=1.5)
    response, body = await status(server, f"/tasks/{task_id}", "DELETE")
    assert response.code == 202
    assert body == {"task_id": task_id, "revoked": True}
    _, body = await status(server, f"/tasks/{task_id}?wait=5")
    expect_status(body, task_id, "REVOKED",
                  error={"type": "TaskRevokedError", "message": "revoked"})
    await asyncio.sleep(0.3)
    assert not evidence.exists()


async def test_revoke_terminate_ends_a_running_task(server: Server, prod: Producer) -> None:
    task_id = await send(prod, "sleep", 30)
    await state_is(server, task_id, "STARTED")
    t0 = time.monotonic()
    response, body = await status(server, f"/tasks/{task_id}?terminate=true", "DELETE")
    assert response.code == 202 and body == {"task_id": task_id, "revoked": True}
    _, body = await status(server, f"/tasks/{task_id}?wait=5")
    assert time.monotonic() - t0 < 5
    expect_status(body, task_id, "REVOKED",
                  error={"type": "TaskRevokedError", "message": "terminated"})


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_revoke_with_a_bad_terminate_is_400_and_revokes_nothing(
        server: Server, prod: Producer) -> None:
    task_id = await send(prod, "add", 2, 2, countdown=0.5)
    for bad in ("maybe", "", "2", "truee"):
        response, body = await status(server, f"/tasks/{task_id}?terminate={bad}", "DELETE")
        assert response.code == 400
        assert body == {"error": {"type": "BadRequest", "argument": "terminate",
                                  "message": "terminate must be true or false"}}
    _, body = await status(server, f"/tasks/{task_id}?wait=5")
    expect_status(body, task_id, "SUCCESS", result=4)
    response, _ = await status(server, f"/tasks/{task_id}?terminate=FALSE", "DELETE")
    assert response.code == 202  # the values are case-insensitive


# ----------------------------------------------------------------- fire and forget routes
async def test_fire_and_forget_points_at_the_status_routes(server: Server) -> None:
    headers = {"Content-Type": "application/json"}
    response = await server.fetch("/fire/add", "POST", json.dumps({"x": 20, "y": 22}), headers)
    assert response.code == 202
    body = body_of(response)
    [task_id] = body["task_ids"]
    assert body == {"task_ids": [task_id], "status_urls": [f"/tasks/{task_id}"]}
    assert response.headers["Location"] == f"/tasks/{task_id}"
    _, status_body = await status(server, response.headers["Location"] + "?wait=5")
    expect_status(status_body, task_id, "SUCCESS", result=42)

    response = await server.fetch("/fire/two", "POST", json.dumps({"x": 1, "y": 2}), headers)
    body = body_of(response)
    first, second = body["task_ids"]
    assert body["status_urls"] == [f"/tasks/{first}", f"/tasks/{second}"]
    assert response.headers["Location"] == f"/tasks/{first}"
    results = [(await status(server, url + "?wait=5"))[1] for url in body["status_urls"]]
    expect_status(results[0], first, "SUCCESS", result=3)
    expect_status(results[1], second, "SUCCESS",
                  result={"args": [], "kwargs": {"x": 1, "y": 2}})


async def test_fire_and_forget_without_status_routes(prod: Producer, backend: Backend) -> None:
    srv = Server(tcelery_async_routes(r"/fire/add", post_tasks=[T + "add"], producer=prod))
    try:
        response = await srv.fetch("/fire/add?x=1", "POST", "y=2",
                                   {"Content-Type": "application/x-www-form-urlencoded"})
    finally:
        srv.close()
    assert response.code == 202
    assert "Location" not in response.headers
    body = body_of(response)
    assert list(body) == ["task_ids"] and len(body["task_ids"]) == 1
    [task_id] = body["task_ids"]
    if backend.persistent:  # any process can still look it up
        result = await prod.result(task_id)
        assert await result.get(timeout=5) == "12"  # form values are strings
    else:  # nobody mounted status routes, so rpc:// did not record it
        with pytest.raises(UnknownTask):
            await prod.result(task_id)


# ------------------------------------------------------------------------- handler mixin
class _LoginRequired:
    """An app's login mixin: a user from a header; anonymous requests are refused."""

    def get_current_user(self) -> str | None:
        return self.request.headers.get("X-User")  # type: ignore[attr-defined,no-any-return]

    def prepare(self) -> None:
        if not self.current_user:  # type: ignore[attr-defined]
            raise HTTPError(401, "log in first")
        super().prepare()  # type: ignore[misc]


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_handler_mixin_guards_every_status_route(prod: Producer) -> None:
    srv = Server(tcelery_status_routes("/tasks", handler=_LoginRequired, producer=prod))
    try:
        task_id = await send(prod, "add", 3, 4, countdown=0.5)
        for method, path in (("GET", f"/tasks/{task_id}"), ("GET", f"/tasks/{task_id}/events"),
                             ("DELETE", f"/tasks/{task_id}")):
            response, body = await status(srv, path, method)
            assert response.code == 401, (method, path)
            assert body == {"error": {"type": "Unauthorized", "message": "log in first"}}
        user = {"X-User": "ann"}
        response, body = await status(srv, f"/tasks/{task_id}?wait=5", headers=user)
        assert response.code == 200
        expect_status(body, task_id, "SUCCESS", result=7)  # the anonymous DELETE did nothing
        client = await SSEClient.open(srv.port, f"/tasks/{task_id}/events", user)
        try:
            check_stream_headers(client)
            await client.read_to_end(5)
            [data] = check_events(client, task_id)
        finally:
            await client.close()
        assert data["state"] == "SUCCESS"
        response, body = await status(srv, f"/tasks/{task_id}", "PUT", body=b"", headers=user)
        assert response.code == 405 and body["error"]["allowed"] == ["GET", "DELETE"]
    finally:
        srv.close()


# ---------------------------------------------------------------- two processes on Redis
def _start_status_app(backend: Backend, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **backend.env,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tests.status_app"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=err)
    return proc


def _read_port(proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            line = proc.stdout.readline().decode()
            if line.startswith("PORT "):
                return int(line.split()[1])
    raise RuntimeError(f"tests.status_app did not start ({proc.poll()}):\n"
                       f"{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def two_apps(pool: BackendPool, tmp_path: Path) -> Iterator[tuple[Backend, int, int]]:
    backend = pool.get("redis")
    procs = [_start_status_app(backend, tmp_path / f"app{i}.log") for i in range(2)]
    try:
        ports = [_read_port(proc, tmp_path / f"app{i}.log") for i, proc in enumerate(procs)]
        yield backend, ports[0], ports[1]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


async def test_a_task_sent_through_one_process_is_watched_through_another(
        two_apps: tuple[Backend, int, int]) -> None:
    backend, port_a, port_b = two_apps
    client = AsyncHTTPClient(force_instance=True)

    async def fetch(port: int, path: str, method: str = "GET", **kwargs: Any) -> Any:
        response = await client.fetch(f"http://127.0.0.1:{port}{path}", method=method,
                                      raise_error=False, request_timeout=15, **kwargs)
        return response, body_of(response)

    try:
        response, body = await fetch(port_a, "/fire/progress", "POST",
                                     body=json.dumps({"steps": 4, "delay": 0.2}),
                                     headers={"Content-Type": "application/json"})
        assert response.code == 202, body
        [task_id] = body["task_ids"]
        location = response.headers["Location"]
        assert location == f"/tasks/{task_id}"
        stream = await SSEClient.open(port_b, f"{location}/events")  # the other process
        try:
            check_stream_headers(stream)
            await stream.read_to_end(15)
        finally:
            await stream.close()
        datas = check_events(stream, task_id)
        assert [d["state"] for d in datas] == ["PENDING", "STARTED", *["PROGRESS"] * 4,
                                               "SUCCESS"]
        assert [d["progress"]["current"] for d in datas[2:6]] == [1, 2, 3, 4]
        expect_status(datas[-1], task_id, "SUCCESS", result=4)
        for port in (port_b, port_a):
            _, body = await fetch(port, f"{location}?wait=5")
            expect_status(body, task_id, "SUCCESS", result=4)
        _, health = await fetch(port_b, "/health")
        assert health["kind"] == "redis" and health["healthy"] is True
        assert health["watched"] == 0 and health["pending"] == 0
    finally:
        client.close()
    # The worker stored it under the run's global_keyprefix, and nowhere else. The key's
    # name is the backend's (Celery 5.3/5.4 put "_" after the prefix, 5.5+ not after ":").
    key = backend.app().backend.get_key_for_task(task_id)
    assert key.startswith(backend.keyprefix.encode())
    assert redis_keys(f"*celery-task-meta-{task_id}") == [key]
    assert redis_keys(f"celery-task-meta-{task_id}") == []


# ---------------------------------------------------------------- backend unavailable
def _unreachable_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_backend_down_is_503() -> None:
    celery_app = worker_app.make_app(f"{worker_app.PREFIX}-down",
                                     f"redis://127.0.0.1:{_unreachable_port()}/0")
    prod = Producer(celery_app, connect_timeout=1)
    srv = Server(tcelery_status_routes("/tasks", producer=prod))
    try:
        t0 = time.monotonic()
        for path in ("/tasks/some-task", "/tasks/some-task/events"):
            response, body = await status(srv, path)
            assert response.code == 503, body
            assert response.headers["Retry-After"] == "1"
            assert body == {"error": {"type": "BrokerUnavailable", "message":
                                      "the result backend is unavailable; retry in 1 s"}}
        assert time.monotonic() - t0 < 6
    finally:
        srv.close()
        await prod.close()
        celery_app.close()


# -------------------------------------------------------------------- misconfiguration
def _app_without_backend() -> Celery:
    return Celery("no_results", broker=BROKER_URL, set_as_current=False)


@pytest.mark.parametrize(("url", "named"), [
    ("nosuchscheme://x", "nosuchscheme://x"),
    ("db+nosuchdialect://ann:secret@db/x", "db+nosuchdialect://ann:***@db/x")])
async def test_an_unreadable_backend_is_refused_naming_it(url: str, named: str) -> None:
    celery_app = worker_app.make_app(f"{worker_app.PREFIX}-bad", url)
    before = producer_module._default
    expected = re.escape(f"result backend {named!r} cannot be used")
    with pytest.raises(ConfigurationError, match=expected) as refused:
        Producer(celery_app)
    assert "secret" not in str(refused.value)  # named, without its password
    with pytest.raises(ConfigurationError, match=expected):
        setup_nonblocking_producer(celery_app)
    assert producer_module._default is before  # nothing half-built was installed


async def test_routes_that_need_results_refuse_an_app_without_backend() -> None:
    celery_app = _app_without_backend()

    @celery_app.task(name="no_results.add")
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(ConfigurationError, match="a waiting route needs a result backend") \
            as refused:
        tcelery_routes("/add", get_tasks=[add])
    assert "no_results" in str(refused.value)  # names the app (or its task)
    assert len(tcelery_async_routes("/add", post_tasks=[add])) == 1  # fire and forget: fine
    prod = Producer(celery_app)
    try:
        assert prod.source is None and prod.result_backend == "disabled"
        with pytest.raises(ConfigurationError, match="status routes needs a result backend"):
            tcelery_status_routes(producer=prod)
        with pytest.raises(ConfigurationError, match="a waiting route needs a result backend"):
            tcelery_routes("/add", get_tasks=["no_results.add"], producer=prod)
        with pytest.raises(ConfigurationError, match="looking up a task needs a result"):
            await prod.result("some-task")
    finally:
        await prod.close()
        celery_app.close()
