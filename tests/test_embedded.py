"""The embedded mode (``broker_url="memory://"``): a real Celery worker in a thread of this
process, no broker and no result backend involved.

Every test builds a Celery app of its own (``make_kit``: tasks with names unique to it),
since the embedded mode rewrites an app's configuration, and starts and stops an embedded
worker of its own: several in one process, one after the other. The tasks prove that they
ran by appending to ``kit.ran``, a list kept in this module.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
import unittest
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import celery._state
import pytest
from celery import Celery
from tornado.web import Application

from tcelery_req_handler import (
    ConfigurationError,
    Producer,
    TaskFailed,
    TaskRevoked,
    get_producer,
    routes,
    setup_nonblocking_producer,
    tcelery_async_routes,
    tcelery_group_routes,
    tcelery_routes,
    tcelery_status_routes,
)
from tcelery_req_handler.testing import EmbeddedHTTPTestCase, embedded
from tests.sse import SSEClient
from tests.test_http import Server, body_of

pytestmark = pytest.mark.timeout(30)

JSON = {"Content-Type": "application/json"}
STATUS_KEYS = {"task_id", "state", "ready", "successful", "result", "error", "progress",
               "date_done"}
GROUP_KEYS = {"group_id", "tasks_total", "tasks_completed", "tasks_succeeded", "tasks_failed",
              "processed", "succeeded", "results", "states"}


# ------------------------------------------------------------------------------ the app
@dataclass
class Kit:
    """A Celery app made for one test, its tasks, and what they did."""

    app: Celery
    name: str
    ran: list[Any] = field(default_factory=list)
    tasks: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, task: str) -> Any:
        try:
            return self.__dict__["tasks"][task]
        except KeyError:
            raise AttributeError(task) from None

    def runs(self, task: str) -> list[Any]:
        return [entry[1:] for entry in list(self.ran) if entry[0] == task]


def make_kit(tag: str = "") -> Kit:
    name = f"embedded-{tag}{uuid.uuid4().hex[:8]}"
    app = Celery(name, set_as_current=False)
    app.conf.update(task_track_started=True)  # STARTED is stored, as a real worker would
    kit = Kit(app, name)
    ran = kit.ran

    def task(**options: Any) -> Callable[[Callable[..., Any]], Any]:
        def register(fn: Callable[..., Any]) -> Any:
            kit.tasks[fn.__name__] = app.task(name=f"{name}.{fn.__name__}", **options)(fn)
            return kit.tasks[fn.__name__]
        return register

    @task()
    def add(x: Any, y: Any) -> int:
        ran.append(("add", x, y))
        return int(x) + int(y)

    @task()
    def fail(message: str) -> None:
        ran.append(("fail", message))
        raise ValueError(message)

    @task(bind=True, max_retries=5)
    def flaky(self: Any, succeed_after: int) -> int:
        ran.append(("flaky", self.request.retries))
        if self.request.retries < succeed_after:
            raise self.retry(countdown=0.05)
        return int(self.request.retries)

    @task(bind=True)
    def progress(self: Any, steps: int, delay: float) -> int:
        for i in range(1, int(steps) + 1):
            self.update_state(state="PROGRESS", meta={"current": i, "total": int(steps)})
            time.sleep(float(delay))
        ran.append(("progress", steps))
        return int(steps)

    @task()
    def record(token: str, delay: float = 0.0) -> str:
        time.sleep(float(delay))
        ran.append(("record", token))
        return token

    @task()
    def double(x: int, delay: float = 0.0) -> int:
        time.sleep(float(delay))
        ran.append(("double", x))
        return 2 * int(x)

    @task()
    def logs(message: str) -> str:
        logging.getLogger(f"{name}.task").warning("task says %s", message)
        ran.append(("logs", message))
        return message

    return kit


@pytest.fixture
def kit() -> Kit:
    return make_kit()


@pytest.fixture
async def prod(kit: Kit) -> AsyncIterator[Producer]:
    """A started embedded producer for ``kit.app`` (not installed as the default)."""
    producer = Producer(kit.app, broker_url="memory://", result_timeout=10)
    await asyncio.wait_for(producer.connect(), 15)
    try:
        yield producer
    finally:
        await asyncio.wait_for(producer.close(), 15)
    assert not producer.transport._thread.is_alive()  # type: ignore[attr-defined]


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def collect(result: Any, timeout: float = 10) -> list[tuple[str, Any]]:
    return [item async for item in result.states(timeout=timeout)]


# ------------------------------------------------------------------ through the producer
async def test_round_trip(prod: Producer, kit: Kit) -> None:
    result = await prod.apply_async(kit.add, (2, 40))
    assert await result.get(timeout=5) == 42
    assert result.state == "SUCCESS" and result.successful() and result.ready()
    assert kit.runs("add") == [(2, 40)]
    by_name = await prod.send_task(f"{kit.name}.add", (1,), {"y": 2})
    assert await by_name.get(timeout=5) == 3
    assert prod.connected
    assert prod.transport.describe() == {"kind": "memory", "connected": True,
                                         "concurrency": 4}


async def test_failure_raises_task_failed(prod: Producer, kit: Kit) -> None:
    result = await prod.apply_async(kit.fail, ("nope",))
    with pytest.raises(TaskFailed) as caught:
        await result.get(timeout=5)
    assert caught.value.exc_type == "ValueError"
    assert "nope" in str(caught.value)
    assert result.state == "FAILURE" and result.failed()
    assert isinstance(await result.get(timeout=1, propagate=False), dict)


async def test_retries_then_success(prod: Producer, kit: Kit) -> None:
    result = await prod.apply_async(kit.flaky, (2,))
    states = await collect(result)
    assert await result.get(timeout=1) == 2
    assert kit.runs("flaky") == [(0,), (1,), (2,)]
    names = [state for state, _ in states]
    assert names.count("RETRY") == 2 and names[-1] == "SUCCESS"
    assert names == ["STARTED", "RETRY", "STARTED", "RETRY", "STARTED", "SUCCESS"]


async def test_update_state_progress_in_order(prod: Producer, kit: Kit) -> None:
    result = await prod.apply_async(kit.progress, (5, 0.02))
    states = await collect(result)
    assert [s for s, _ in states] == ["STARTED", *["PROGRESS"] * 5, "SUCCESS"]
    assert [m for s, m in states if s == "PROGRESS"] == \
        [{"current": i, "total": 5} for i in range(1, 6)]
    assert states[-1] == ("SUCCESS", 5)
    assert set(states[0][1]) >= {"pid", "hostname"}  # STARTED's meta, as Celery stores it


async def test_countdown(prod: Producer, kit: Kit) -> None:
    started = time.monotonic()
    result = await prod.apply_async(kit.add, (1, 1), countdown=0.6)
    assert await result.get(timeout=5) == 2
    assert 0.5 <= time.monotonic() - started < 3


async def test_revoke_a_queued_task_it_never_runs(prod: Producer, kit: Kit) -> None:
    result = await prod.apply_async(kit.record, ("revoked",), countdown=0.8)
    forced = await prod.apply_async(kit.record, ("forced",), countdown=0.8)
    await prod.revoke(result.task_id)
    await prod.revoke(forced.task_id, terminate=True)  # downgraded to a revoke, no error
    for each in (result, forced):
        with pytest.raises(TaskRevoked):
            await each.get(timeout=5)
        assert each.state == "REVOKED"
    await prod.wait_idle(5)
    await asyncio.sleep(0.2)
    assert kit.runs("record") == []


async def test_result_of_a_finished_task_by_id(prod: Producer, kit: Kit) -> None:
    sent = await prod.apply_async(kit.add, (3, 4), reply=False)
    await prod.wait_idle(5)
    looked_up = await prod.result(sent.task_id)
    assert looked_up.state == "SUCCESS" and await looked_up.get(timeout=1) == 7
    unknown = await prod.result(uuid.uuid4().hex)
    assert unknown.state == "PENDING"  # any id reads PENDING, as in Celery
    failed = await prod.apply_async(kit.fail, ("later",), reply=False)
    await prod.wait_idle(5)
    assert (await prod.result(failed.task_id)).state == "FAILURE"


async def test_groups(prod: Producer, kit: Kit) -> None:
    group = await prod.apply_group(kit.double, [((i,), {}) for i in range(6)])
    assert await group.wait(10)
    status = group.status()
    assert status["results"] == [0, 2, 4, 6, 8, 10] and status["processed"]
    assert status["tasks_succeeded"] == 6 and status["succeeded"]
    again = await prod.group(group.group_id)
    assert again.task_ids == group.task_ids
    assert again.status() == status
    # Celery's own GroupResult reads the same group from the embedded backend.
    restored = await asyncio.to_thread(kit.app.GroupResult.restore, group.group_id)
    assert [r.id for r in restored.results] == group.task_ids
    # A failing member, and a group with members already known (no task sent for them).
    mixed = await prod.apply_group(kit.double, [((1,), {}), ((2,), {}), ((3,), {})],
                                   known={1: 99})
    assert await mixed.wait(10)
    assert mixed.status()["results"] == [2, 99, 6]
    assert sorted(kit.runs("double")) == [(i,) for i in (0, 1, 1, 2, 3, 3, 4, 5)]


async def test_wait_idle_after_fire_and_forget(prod: Producer, kit: Kit, tmp_path: Path
                                               ) -> None:
    tokens = [f"t{i}" for i in range(12)]
    for token in tokens:
        await prod.apply_async(kit.record, (token, 0.05), reply=False)
    await prod.apply_async(kit.record, ("later", 0.0), countdown=0.5, reply=False)
    await prod.apply_async(kit.flaky, (2,), reply=False)  # re-queued by its own retries
    assert ("later",) not in kit.runs("record")  # still waiting out its countdown
    await prod.wait_idle(10)
    assert sorted(t for (t,) in kit.runs("record")) == sorted([*tokens, "later"])
    assert kit.runs("flaky") == [(0,), (1,), (2,)]
    await prod.wait_idle(1)  # idle already: returns at once


async def test_wait_idle_is_bounded(prod: Producer, kit: Kit) -> None:
    await prod.apply_async(kit.record, ("slow", 0.6), reply=False)
    with pytest.raises(TimeoutError):
        await prod.wait_idle(0.2)
    await prod.wait_idle(5)


async def test_latency_no_one_second_poll(prod: Producer, kit: Kit) -> None:
    await (await prod.apply_async(kit.add, (0, 0))).get(timeout=5)  # warm up
    durations = []
    for i in range(20):
        started = time.monotonic()
        assert await (await prod.apply_async(kit.add, (i, 1))).get(timeout=5) == i + 1
        durations.append(time.monotonic() - started)
    assert max(durations) < 0.5, durations
    # A worker that sat idle past kombu's 1 s poll picks a new message up at once too.
    await asyncio.sleep(1.2)
    started = time.monotonic()
    assert await (await prod.apply_async(kit.add, (1, 1))).get(timeout=5) == 2
    assert time.monotonic() - started < 0.5


async def test_several_workers_one_after_the_other() -> None:
    for i in range(3):
        kit = make_kit(f"seq{i}-")
        async with Producer(kit.app, broker_url="memory://") as producer:
            assert await (await producer.apply_async(kit.add, (i, i))).get(timeout=5) == 2 * i
            thread = producer.transport._thread  # type: ignore[attr-defined]
        assert thread is not None and not thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "tcelery-embedded-worker"]


async def test_setup_nonblocking_producer_installs_it() -> None:
    kit = make_kit()
    previous = celery._state.default_app
    joins_blocked = celery._state.task_join_will_block()
    producer = setup_nonblocking_producer(kit.app, broker_url="memory://")
    try:
        assert get_producer() is producer
        assert kit.app.conf.broker_url.startswith("memory://")  # switched, as documented
        assert await (await producer.apply_async(kit.add, (5, 5))).get(timeout=5) == 10
    finally:
        await producer.close()
    with pytest.raises(ConfigurationError):
        get_producer()  # close() uninstalled it
    # The worker made the app Celery's default while it ran, and gave the old one back.
    assert celery._state.default_app is previous
    # ... and the process may call a stock AsyncResult.get() again, as before.
    assert celery._state.task_join_will_block() is joins_blocked


async def test_logging_untouched(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kombu")
    root = logging.getLogger()
    saved = root.level
    marker = logging.NullHandler()
    root.addHandler(marker)
    root.setLevel(logging.INFO + 3)  # an odd level: nothing sets it by chance
    try:
        before = (root.level, list(root.handlers))
        kit = make_kit()
        async with embedded(kit.app, install=False) as producer:
            assert (root.level, list(root.handlers)) == before
            assert await (await producer.apply_async(kit.logs, ("hi",))).get(timeout=5) == "hi"
            assert (root.level, list(root.handlers)) == before
        assert (root.level, list(root.handlers)) == before
        # The task's own warning, and no noise from starting and stopping the worker.
        assert [r.getMessage() for r in caplog.records] == ["task says hi"]
    finally:
        root.removeHandler(marker)
        root.setLevel(saved)


# ------------------------------------------------------------------------- through HTTP
@pytest.fixture
async def server(prod: Producer, kit: Kit) -> AsyncIterator[Server]:
    common = {"producer": prod}
    srv = Server(routes(
        tcelery_routes(r"/add/(\d+)/(\d+)", get_tasks=[kit.add], **common),
        tcelery_routes(r"/cached/(\d+)/(\d+)", get_tasks=[kit.add], cache=60, **common),
        tcelery_routes(r"/fail", get_tasks=[kit.fail], **common),
        tcelery_async_routes(r"/fire", post_tasks=[kit.record], **common),
        tcelery_async_routes(r"/fire/progress", post_tasks=[kit.progress], countdown=0.5,
                             **common),
        tcelery_async_routes(r"/fire/later", post_tasks=[kit.record], countdown=0.8,
                             **common),
        tcelery_status_routes("/tasks", **common),
        tcelery_group_routes(r"/groups", kit.double, timeout=10, **common),
        tcelery_group_routes(r"/groups-later", kit.double, countdown=0.5, timeout=10,
                             **common),
        tcelery_group_routes(r"/groups-cached", kit.double, cache=60, timeout=10, **common),
    ))
    try:
        yield srv
    finally:
        srv.close()


async def test_http_waiting_route(server: Server, kit: Kit) -> None:
    response = await server.fetch("/add/2/40")
    assert response.code == 200 and body_of(response) == 42
    failed = await server.fetch("/fail?message=boom")
    assert failed.code == 500
    assert body_of(failed)["error"] == {"type": "ValueError", "message": "boom"}


async def test_http_fire_and_forget_then_status(server: Server, kit: Kit) -> None:
    response = await server.fetch("/fire", "POST", json.dumps({"token": "ff"}), JSON)
    assert response.code == 202
    body = body_of(response)
    [task_id] = body["task_ids"]
    assert body["status_urls"] == [f"/tasks/{task_id}"]
    assert response.headers["Location"] == f"/tasks/{task_id}"
    status = await server.fetch(response.headers["Location"] + "?wait=5")
    assert status.code == 200
    data = body_of(status)
    assert set(data) == STATUS_KEYS
    assert data["state"] == "SUCCESS" and data["result"] == "ff" and data["ready"]
    assert data["date_done"]
    assert kit.runs("record") == [("ff",)]


async def test_http_events_see_progress_then_success(server: Server) -> None:
    response = await server.fetch("/fire/progress", "POST",
                                  json.dumps({"steps": 3, "delay": 0.05}), JSON)
    [task_id] = body_of(response)["task_ids"]
    client = await SSEClient.open(server.port, f"/tasks/{task_id}/events")
    try:
        assert client.status == 200
        assert client.headers["content-type"].startswith("text/event-stream")
        await client.read_to_end(10)
    finally:
        await client.close()
    assert client.ended and client.parser.retry == 3000
    events = client.events
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    datas = [e.json() for e in events]
    assert [e.type for e in events] == [d["state"] for d in datas]
    assert [d["state"] for d in datas] == ["PENDING", "STARTED", *["PROGRESS"] * 3, "SUCCESS"]
    assert [d["progress"]["current"] for d in datas if d["state"] == "PROGRESS"] == [1, 2, 3]
    assert datas[-1]["result"] == 3 and datas[-1]["successful"] is True
    assert all(set(d) == STATUS_KEYS and d["task_id"] == task_id for d in datas)


async def test_http_revoke(server: Server, prod: Producer, kit: Kit) -> None:
    response = await server.fetch("/fire/later", "POST", json.dumps({"token": "x"}), JSON)
    [task_id] = body_of(response)["task_ids"]
    revoked = await server.fetch(f"/tasks/{task_id}?terminate=true", "DELETE")
    assert revoked.code == 202 and body_of(revoked) == {"task_id": task_id, "revoked": True}
    status = body_of(await server.fetch(f"/tasks/{task_id}?wait=5"))
    assert status["state"] == "REVOKED" and status["error"]["type"] == "TaskRevokedError"
    await prod.wait_idle(5)
    assert kit.runs("record") == []


async def test_http_group_post_get_events(server: Server, kit: Kit) -> None:
    response = await server.fetch("/groups", "POST",
                                  json.dumps({"tasks": [{"x": 1}, [2], {"x": 3}]}), JSON)
    assert response.code == 202
    sent = body_of(response)
    gid = sent["group_id"]
    assert len(sent["task_ids"]) == 3 and response.headers["Location"].endswith(gid)
    done = body_of(await server.fetch(f"/groups/{gid}?wait=10"))
    assert set(done) == GROUP_KEYS
    assert done["results"] == [2, 4, 6] and done["processed"] and done["succeeded"]
    assert done["states"] == ["SUCCESS"] * 3 and done["tasks_completed"] == 3
    # A stream opened while the members wait out their countdown sees them complete.
    response = await server.fetch("/groups-later", "POST", json.dumps(
        {"tasks": [{"x": i, "delay": 0.05 * i} for i in range(4)]}), JSON)
    gid = body_of(response)["group_id"]
    client = await SSEClient.open(server.port, f"/groups-later/{gid}/events")
    try:
        assert client.status == 200
        await client.read_to_end(10)
    finally:
        await client.close()
    events = client.events
    assert [e.type for e in events] == ["progress"] * (len(events) - 1) + ["processed"]
    completed = [e.json()["tasks_completed"] for e in events]
    assert completed[0] == 0 and completed[-1] == 4 and completed == sorted(completed)
    assert len(events) >= 3, completed  # it saw the count rise, not just the end
    assert events[-1].json()["results"] == [0, 2, 4, 6]
    assert all(e.json()["group_id"] == gid for e in events)
    missing = await server.fetch(f"/groups/{uuid.uuid4().hex}")
    assert missing.code == 404


async def test_http_cache_hit_and_miss(server: Server, kit: Kit) -> None:
    first = await server.fetch("/cached/20/22")
    assert first.code == 200 and body_of(first) == 42 and first.headers["X-Cache"] == "miss"
    await until(lambda: len(kit.runs("add")) == 1, 5, "the task ran")
    second = await server.fetch("/cached/20/22")
    assert second.code == 200 and body_of(second) == 42 and second.headers["X-Cache"] == "hit"
    other = await server.fetch("/cached/20/23")
    assert body_of(other) == 43 and other.headers["X-Cache"] == "miss"
    await asyncio.sleep(0.2)
    assert kit.runs("add") == [("20", "22"), ("20", "23")]  # the hit sent no task
    # A group route with cache=: the same batch again sends nothing.
    batch = json.dumps({"tasks": [{"x": 7}, {"x": 8}]})
    miss = await server.fetch("/groups-cached", "POST", batch, JSON)
    assert miss.code == 202 and miss.headers["X-Cache"] == "miss"
    gid = body_of(miss)["group_id"]
    assert body_of(await server.fetch(f"/groups-cached/{gid}?wait=10"))["results"] == [14, 16]
    await asyncio.sleep(0.2)  # the results are cached once the route saw them
    hit = await server.fetch("/groups-cached", "POST", batch, JSON)
    assert hit.code == 202 and hit.headers["X-Cache"] == "hit"
    now = body_of(await server.fetch(f"/groups-cached/{body_of(hit)['group_id']}"))
    assert now["results"] == [14, 16] and now["processed"]
    assert sorted(kit.runs("double")) == [(7,), (8,)]


def test_cache_accepted_by_the_factories_in_embedded_mode() -> None:
    kit = make_kit()
    producer = Producer(kit.app, broker_url="memory://")  # embeds the app; not started
    assert producer.result_backend == "embedded"
    assert tcelery_routes(r"/c", get_tasks=[kit.add], cache=10, producer=producer)
    assert tcelery_group_routes(r"/g", kit.double, cache=10, producer=producer)
    assert tcelery_routes(r"/c2", get_tasks=[kit.add], cache=10)  # the task's app decides


# ----------------------------------------------------------------------- the testing kit
async def test_embedded_restores_the_previous_default() -> None:
    kit, other = make_kit(), make_kit()
    outer = Producer(other.app, broker_url="memory://")  # never started
    setup_nonblocking_producer(other.app, broker_url="memory://")
    from tcelery_req_handler import producer as producer_module

    producer_module._set_default(outer)
    try:
        async with embedded(kit.app) as producer:
            assert get_producer() is producer and producer.connected
            assert await (await producer.apply_async(kit.add, (1, 2))).get(timeout=5) == 3
        assert get_producer() is outer
        async with embedded(kit.app, install=False) as producer:
            assert get_producer() is outer
        producer_module._set_default(None)
        async with embedded(kit.app):
            pass
        with pytest.raises(ConfigurationError):
            get_producer()
    finally:
        producer_module._set_default(None)


_CASE_KIT = make_kit("case-")


class EmbeddedCase(EmbeddedHTTPTestCase):
    celery_app = _CASE_KIT.app

    def get_app(self) -> Application:
        return Application(routes(
            tcelery_routes(r"/add/(\d+)/(\d+)", get_tasks=[_CASE_KIT.add]),
            tcelery_async_routes(r"/fire", post_tasks=[_CASE_KIT.record]),
        ))

    def test_waiting_route(self) -> None:
        assert get_producer() is self.producer
        response = self.fetch("/add/1/2")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(response.body), 3)

    def test_fire_and_forget_then_wait_idle(self) -> None:
        tokens = [f"case{i}" for i in range(5)]
        for token in tokens:
            response = self.fetch("/fire", method="POST",
                                  body=json.dumps({"token": token, "delay": 0.05}),
                                  headers=JSON)
            self.assertEqual(response.code, 202)
        self.wait_idle(10)
        ran = {t for (t,) in _CASE_KIT.runs("record")}
        self.assertTrue(set(tokens) <= ran, ran)


def test_embedded_case_is_a_unittest_case() -> None:
    assert issubclass(EmbeddedCase, unittest.TestCase)


PLUGIN_TEST = '''
import json
import uuid

import pytest
from celery import Celery
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application

from tcelery_req_handler import get_producer, routes, tcelery_routes

pytest_plugins = ["tcelery_req_handler.testing"]

APP = Celery(f"embedded-plugin-{uuid.uuid4().hex[:8]}", set_as_current=False)


@APP.task(name="plugin.add")
def add(x, y):
    return int(x) + int(y)


@pytest.fixture
def tcelery_app():
    return APP


@pytest.mark.asyncio
async def test_uses_the_fixture(tcelery_producer):
    assert get_producer() is tcelery_producer
    assert await (await tcelery_producer.apply_async(add, (2, 3))).get(timeout=5) == 5
    sock, port = bind_unused_port()
    server = HTTPServer(Application(routes(
        tcelery_routes(r"/add/(\\d+)/(\\d+)", get_tasks=[add]))))
    server.add_sockets([sock])
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(f"http://127.0.0.1:{port}/add/40/2",
                                      request_timeout=10)
        assert json.loads(response.body) == 42
    finally:
        client.close()
        server.stop()
'''


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_pytest_plugin_fixture(tmp_path: Path, mode: str) -> None:
    test_file = tmp_path / "test_plugin_user.py"
    test_file.write_text(textwrap.dedent(PLUGIN_TEST))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-o", f"asyncio_mode={mode}", "-o", "asyncio_default_fixture_loop_scope=function",
         "-W", "error::pytest.PytestUnraisableExceptionWarning", str(test_file)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout, run.stdout
