"""Group routes and ``cache=`` against real RabbitMQ, real Redis and a real Celery worker.

The routes are served in-process (``tests.test_http.Server``) for ``tests.group_app.app``,
whose worker (``celery -A tests.group_app worker``) this module starts and stops. Its queue
and its Redis ``global_keyprefix`` are the run's own; both are removed at the end. Every
test uses counters (and so cache keys) of its own: ``count`` INCRs one in Redis each time it
runs, which is how the tests prove a task ran, or that none was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pika.exceptions
import pytest
from celery import Celery

from tcelery_req_handler import (
    ConfigurationError,
    Producer,
    routes,
    tcelery_async_routes,
    tcelery_group_routes,
    tcelery_routes,
)
from tests import group_app as g
from tests.conftest import BROKER_URL, blocking_connection
from tests.test_http import Server, body_of, error_of
from tests.workers import CeleryWorker

JSON = {"Content-Type": "application/json"}
STATUS_FIELDS = {"group_id", "tasks_total", "tasks_completed", "tasks_succeeded",
                 "tasks_failed", "processed", "succeeded", "results", "states"}
WAIT = 20  # the group routes' timeout: the longest ?wait


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def group_worker() -> Iterator[CeleryWorker]:
    worker = CeleryWorker("tests.group_app", [g.QUEUE], f"groups-{g.PREFIX}", concurrency=4)
    try:
        worker.start()
        yield worker
    finally:
        worker.stop()
        g.cleanup()


@pytest.fixture
async def prod(group_worker: CeleryWorker) -> AsyncIterator[Producer]:
    async with Producer(g.app, result_timeout=20) as producer:  # connected, closed after
        yield producer


@pytest.fixture
async def server(prod: Producer) -> AsyncIterator[Server]:
    common: dict[str, Any] = {"producer": prod, "timeout": WAIT}
    srv = Server(routes(
        tcelery_group_routes(r"/groups/count", g.count, **common),
        tcelery_group_routes(r"/groups/where", g.where, **common),
        tcelery_group_routes(r"/groups/fail", g.maybe_fail, **common),
        tcelery_group_routes(r"/groups/sleep", "groups.sleep", **common),
        # Held by the worker for a second before they run: time to watch, or to revoke.
        tcelery_group_routes(r"/groups/later", g.count, countdown=1, **common),
        tcelery_group_routes(r"/groups/cached", g.count, cache=60, **common),
        # No worker consumes this queue: what is sent there stays there, to be counted.
        tcelery_group_routes(r"/groups/idle", g.count, queue=g.IDLE_QUEUE, max_group_size=5,
                             **common),
        tcelery_group_routes(r"/groups/idle-cached", g.count, queue=g.IDLE_QUEUE, cache=60,
                             max_group_size=5, **common),
        tcelery_routes(r"/one/count", post_tasks=[g.count], cache=60, **common),
        tcelery_routes(r"/one/fail", post_tasks=[g.maybe_fail], cache=60, **common),
    ))
    try:
        yield srv
    finally:
        srv.close()


# ------------------------------------------------------------------------------- helpers
def counter() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


async def post_group(server: Server, path: str, tasks: Any) -> Any:
    body = tasks if isinstance(tasks, (str, bytes)) else json.dumps({"tasks": tasks})
    return await server.fetch(path, "POST", body, JSON)


async def submit(server: Server, path: str, tasks: list[Any], *,
                 cache: str | None = None) -> dict[str, Any]:
    response = await post_group(server, path, tasks)
    assert response.code == 202, response.body
    body = body_of(response)
    assert set(body) == {"group_id", "task_ids"}
    assert len(body["task_ids"]) == len(tasks) == len(set(body["task_ids"]))
    assert response.headers["Location"] == f"{path}/{body['group_id']}"
    assert response.headers.get("X-Cache") == cache
    return body


async def status(server: Server, path: str, gid: str, wait: float | None = None
                 ) -> dict[str, Any]:
    query = f"?wait={wait}" if wait is not None else ""
    response = await server.fetch(f"{path}/{gid}{query}")
    assert response.code == 200, response.body
    body = body_of(response)
    assert set(body) == STATUS_FIELDS
    return body


def queue_depth(name: str) -> int:
    """Messages ready in ``name`` (0 if it was never declared)."""
    conn = blocking_connection()
    try:
        try:
            return conn.channel().queue_declare(name, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return 0
            raise
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def purge(name: str) -> None:
    conn = blocking_connection()
    try:
        with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
            conn.channel().queue_purge(name)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


# Key names come from the app's backend, not from g.KEYPREFIX: whether Celery puts a "_"
# between the global_keyprefix and its own prefixes depends on its version.
def group_keys() -> set[bytes]:
    prefix = g.app.backend.group_keyprefix.decode()
    return set(g.redis_client().scan_iter(match=f"{prefix}*"))


def cache_keys() -> set[bytes]:
    return set(g.redis_client().scan_iter(match=f"{g.cache_keyprefix().decode()}*"))


def cache_key(name: str, args: list[Any], kwargs: dict[str, Any]) -> bytes:
    return g.cache_key(name, args, kwargs)


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


def parse_sse(text: str) -> tuple[int | None, list[tuple[str, str, Any]]]:
    """``(retry, [(id, event, data JSON), ...])`` of a whole event stream (LF line ends)."""
    retry, events = None, []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            assert name not in fields, block
            fields[name] = value
        if "retry" in fields:
            assert set(fields) == {"retry"}, block
            retry = int(fields["retry"])
        elif fields:
            assert set(fields) == {"id", "event", "data"}, block
            events.append((fields["id"], fields["event"], json.loads(fields["data"])))
    return retry, events


# ---------------------------------------------------------------------------------- tests
@pytest.mark.timeout(60)
async def test_100_members_watched_over_sse_from_another_process(server: Server) -> None:
    c = counter()
    tasks = [{"counter": c, "x": i, "delay": 0.04} for i in range(100)]
    sent = await submit(server, "/groups/later", tasks)
    gid = sent["group_id"]
    # A second process reads the stream: curl, connected while the members wait out their
    # one-second countdown.
    curl = await asyncio.create_subprocess_exec(
        "curl", "-N", "-s", "-S", "--max-time", "40", "-H", "Accept: text/event-stream",
        "-D", "-", f"http://127.0.0.1:{server.port}/groups/later/{gid}/events",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(curl.communicate(), 45)
    assert curl.returncode == 0, err
    head, _, stream = out.decode().replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 200"), head
    assert "content-type: text/event-stream" in head.lower()
    retry, events = parse_sse(stream)
    assert retry == 3000
    assert [e[0] for e in events] == [str(i) for i in range(1, len(events) + 1)]
    assert [e[1] for e in events] == ["progress"] * (len(events) - 1) + ["processed"]
    completed = [e[2]["tasks_completed"] for e in events]
    assert completed[0] == 0  # the first event is the state when the stream opened
    assert completed == sorted(completed) and completed[-1] == 100
    assert len(set(completed)) >= 3, completed  # it saw the count rise, not just the end
    assert all(0 < n < 100 for n in completed[1:-1])
    for _, _, data in events:
        assert set(data) == STATUS_FIELDS and data["group_id"] == gid
        assert data["tasks_total"] == 100
        assert data["processed"] is (data["tasks_completed"] == 100)
        assert data["tasks_succeeded"] == data["tasks_completed"] and data["tasks_failed"] == 0
        assert data["states"].count("SUCCESS") == data["tasks_completed"]
        assert [r for r in data["results"] if r is not None] == \
            [2 * i for i, s in enumerate(data["states"]) if s == "SUCCESS"]
    final = events[-1][2]
    assert final["results"] == [2 * i for i in range(100)]
    assert final["states"] == ["SUCCESS"] * 100
    assert final["succeeded"] is True and final["processed"] is True
    assert g.runs(c) == 100
    # Once processed, a new stream is one `processed` event, then the end.
    curl = await asyncio.create_subprocess_exec(
        "curl", "-N", "-s", "--max-time", "10",
        f"http://127.0.0.1:{server.port}/groups/later/{gid}/events",
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(curl.communicate(), 15)
    _, again = parse_sse(out.decode())
    assert again == [("1", "processed", final)]
    # An EventSource reconnecting to a processed group is told to stop: 204.
    curl = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Last-Event-ID: 7",
        f"http://127.0.0.1:{server.port}/groups/later/{gid}/events",
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(curl.communicate(), 15)
    assert out == b"204"


async def test_members_carry_group_and_group_index_headers(server: Server, prod: Producer
                                                           ) -> None:
    sent = await submit(server, "/groups/where", [[i] for i in range(6)])
    gid, ids = sent["group_id"], sent["task_ids"]
    done = await status(server, "/groups/where", gid, wait=WAIT)
    assert done["processed"] is True
    assert done["results"] == [{"x": i, "group": gid, "group_index": i} for i in range(6)]
    # Celery restores the saved group itself, same ids in the same order...
    restored = await asyncio.to_thread(g.app.GroupResult.restore, gid)
    assert restored is not None and restored.id == gid
    assert [r.id for r in restored.results] == ids
    values = await asyncio.to_thread(restored.get, timeout=10)
    assert values == done["results"]
    assert await asyncio.to_thread(restored.successful)
    # ... and so does a producer that did not send it (its own Redis connections).
    other = Producer(g.app, result_timeout=10)
    try:
        group = await other.group(gid)
        assert group.task_ids == ids and group.status() == done
    finally:
        await other.close()
    # kwargs items work as args items do
    sent = await submit(server, "/groups/where", [{"x": 7}, [8]])
    done = await status(server, "/groups/where", sent["group_id"], wait=WAIT)
    assert done["results"] == [{"x": 7, "group": sent["group_id"], "group_index": 0},
                               {"x": 8, "group": sent["group_id"], "group_index": 1}]


async def test_a_failing_member(server: Server) -> None:
    sent = await submit(server, "/groups/fail", [[1], [-2], [3]])
    done = await status(server, "/groups/fail", sent["group_id"], wait=WAIT)
    assert done == {
        "group_id": sent["group_id"], "tasks_total": 3, "tasks_completed": 3,
        "tasks_succeeded": 2, "tasks_failed": 1, "processed": True, "succeeded": False,
        "results": [1, None, 3], "states": ["SUCCESS", "FAILURE", "SUCCESS"]}
    restored = await asyncio.to_thread(g.app.GroupResult.restore, sent["group_id"])
    assert [r.state for r in restored.results] == ["SUCCESS", "FAILURE", "SUCCESS"]
    assert "negative: -2" in str(restored.results[1].result)


@pytest.mark.timeout(60)
async def test_revoked_group_never_runs(server: Server) -> None:
    c = counter()
    sent = await submit(server, "/groups/later", [{"counter": c, "x": i} for i in range(5)])
    gid, ids = sent["group_id"], sent["task_ids"]
    response = await server.fetch(f"/groups/later/{gid}", "DELETE")
    assert response.code == 202, response.body
    assert body_of(response) == {"group_id": gid, "revoked": ids}
    # The worker drops each one when its countdown ends, storing REVOKED.
    done = await status(server, "/groups/later", gid, wait=WAIT)
    assert done == {
        "group_id": gid, "tasks_total": 5, "tasks_completed": 5, "tasks_succeeded": 0,
        "tasks_failed": 5, "processed": True, "succeeded": False, "results": [None] * 5,
        "states": ["REVOKED"] * 5}
    await asyncio.sleep(1.0)  # long past the countdown: had one run, it would have counted
    assert g.runs(c) == 0
    restored = await asyncio.to_thread(g.app.GroupResult.restore, gid)
    assert [r.state for r in restored.results] == ["REVOKED"] * 5
    # Nothing left to revoke in a processed group.
    response = await server.fetch(f"/groups/later/{gid}", "DELETE")
    assert response.code == 202 and body_of(response) == {"group_id": gid, "revoked": []}


@pytest.mark.timeout(60)
async def test_revoke_spares_the_ready_members(server: Server) -> None:
    # One slot's worth of quick members, then members queued behind four busy ones.
    sent = await submit(server, "/groups/sleep", [[0]] + [[1.5]] * 4 + [[0]] * 4)
    gid, ids = sent["group_id"], sent["task_ids"]
    path = f"/groups/sleep/{gid}"
    deadline = time.monotonic() + 10
    while (now := await status(server, "/groups/sleep", gid))["states"][0] != "SUCCESS":
        assert time.monotonic() < deadline, now
        await asyncio.sleep(0.05)
    response = await server.fetch(path, "DELETE")
    assert response.code == 202
    revoked = body_of(response)["revoked"]
    assert ids[0] not in revoked and set(ids[5:]) <= set(revoked)
    done = await status(server, "/groups/sleep", gid, wait=WAIT)
    assert done["processed"] is True and done["states"][0] == "SUCCESS"
    assert done["states"][5:] == ["REVOKED"] * 4 and done["results"][5:] == [None] * 4


async def test_wait_until_processed(server: Server) -> None:
    sent = await submit(server, "/groups/sleep", [[0.5], [0.2], [0.3]])
    gid = sent["group_id"]
    start = time.monotonic()
    early = await status(server, "/groups/sleep", gid, wait=0.1)
    assert time.monotonic() - start < 0.4
    assert early["processed"] is False and early["tasks_completed"] < 3
    assert early["tasks_completed"] == sum(s == "SUCCESS" for s in early["states"])
    done = await status(server, "/groups/sleep", gid, wait=WAIT)
    assert time.monotonic() - start < 5
    assert done["processed"] is True and done["tasks_completed"] == 3
    assert done["results"] == [0.5, 0.2, 0.3] and done["succeeded"] is True
    # a processed group answers ?wait at once
    start = time.monotonic()
    assert await status(server, "/groups/sleep", gid, wait=WAIT) == done
    assert time.monotonic() - start < 0.5
    for bad in ("0", "-1", "abc", str(WAIT + 1)):
        body = error_of(await server.fetch(f"/groups/sleep/{gid}?wait={bad}"), 400)
        assert body["error"]["argument"] == "wait"


async def test_unknown_group_is_404(server: Server) -> None:
    gid = str(uuid.uuid4())
    for method, path in (("GET", f"/groups/count/{gid}"), ("GET", f"/groups/count/{gid}?wait=1"),
                         ("GET", f"/groups/count/{gid}/events"),
                         ("DELETE", f"/groups/count/{gid}")):
        body = error_of(await server.fetch(path, method), 404)
        assert body["group_id"] == gid and gid in body["error"]["message"], (method, path)
        assert body["error"]["type"] == "UnknownTask"


async def test_cache_on_a_waiting_route(server: Server) -> None:
    c = counter()
    request = json.dumps({"counter": c, "x": 21})
    first = await server.fetch("/one/count", "POST", request, JSON)
    assert first.code == 200 and body_of(first) == 42 and first.headers["X-Cache"] == "miss"
    assert g.runs(c) == 1
    key = cache_key("groups.count", [], {"counter": c, "x": 21})
    assert 0 < g.redis_client().pttl(key) <= 60_000
    second = await server.fetch("/one/count", "POST", request, JSON)
    assert second.code == 200 and body_of(second) == 42 and second.headers["X-Cache"] == "hit"
    await asyncio.sleep(0.5)
    assert g.runs(c) == 1  # the hit sent no task
    # Other arguments, another key: a miss; key order does not matter.
    other = await server.fetch("/one/count", "POST", json.dumps({"x": 22, "counter": c}), JSON)
    assert body_of(other) == 44 and other.headers["X-Cache"] == "miss" and g.runs(c) == 2
    again = await server.fetch("/one/count", "POST", json.dumps({"x": 22, "counter": c}), JSON)
    assert again.headers["X-Cache"] == "hit" and g.runs(c) == 2
    # The key is the task and its arguments, whatever the route: a group member hits too.
    shared = await submit(server, "/groups/cached", [{"x": 21, "counter": c}], cache="hit")
    assert (await status(server, "/groups/cached", shared["group_id"]))["results"] == [42]
    assert g.runs(c) == 2
    # Only SUCCESS is cached: a failure is sent again every time.
    for _ in range(2):
        failed = error_of(await server.fetch("/one/fail", "POST", '{"x": -5}', JSON), 500)
        assert failed.get("state") == "FAILURE" and failed["error"]["type"] == "ValueError"
    assert not g.redis_client().exists(cache_key("groups.maybe_fail", [], {"x": -5}))


@pytest.mark.timeout(60)
async def test_cache_on_a_group_route(server: Server) -> None:
    c = counter()
    tasks = [{"counter": c, "x": i} for i in range(5)]
    first = await submit(server, "/groups/cached", tasks, cache="miss")
    done = await status(server, "/groups/cached", first["group_id"], wait=WAIT)
    assert done["results"] == [0, 2, 4, 6, 8] and g.runs(c) == 5
    keys = {cache_key("groups.count", [], t) for t in tasks}
    await until(lambda: keys <= cache_keys(), 10, "the members' results cached")
    # The same batch again: every member from the cache, none sent, all SUCCESS at once.
    second = await submit(server, "/groups/cached", tasks, cache="hit")
    assert not set(second["task_ids"]) & set(first["task_ids"])
    now = await status(server, "/groups/cached", second["group_id"])
    assert now == {**done, "group_id": second["group_id"]}
    restored = await asyncio.to_thread(g.app.GroupResult.restore, second["group_id"])
    assert [r.id for r in restored.results] == second["task_ids"]
    assert await asyncio.to_thread(restored.get, timeout=5) == [0, 2, 4, 6, 8]
    stream = await asyncio.create_subprocess_exec(
        "curl", "-N", "-s", "--max-time", "10",
        f"http://127.0.0.1:{server.port}/groups/cached/{second['group_id']}/events",
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(stream.communicate(), 15)
    assert parse_sse(out.decode())[1] == [("1", "processed", now)]
    await asyncio.sleep(0.5)
    assert g.runs(c) == 5  # no task ran for the second group
    # Partly cached: only the new members are sent (to a queue nobody reads, to count them).
    purge(g.IDLE_QUEUE)
    mixed = [*tasks[:2], {"counter": c, "x": 50}]
    third = await submit(server, "/groups/idle-cached", mixed, cache="miss")
    now = await status(server, "/groups/idle-cached", third["group_id"])
    assert now["states"] == ["SUCCESS", "SUCCESS", "PENDING"]
    assert now["results"] == [0, 2, None] and now["tasks_completed"] == 2
    assert now["processed"] is False
    assert await asyncio.to_thread(queue_depth, g.IDLE_QUEUE) == 1
    purge(g.IDLE_QUEUE)


@pytest.mark.timeout(90)
async def test_a_large_group_on_a_cached_route(server: Server) -> None:
    """400 lookups at once once took every connection of the Redis pool (a 503), and the
    members that finished before the cache filler started were never cached."""
    c = counter()
    tasks = [{"counter": c, "x": i} for i in range(400)]
    first = await submit(server, "/groups/cached", tasks, cache="miss")
    done = await status(server, "/groups/cached", first["group_id"], wait=WAIT)
    assert done["results"] == [2 * i for i in range(400)] and g.runs(c) == 400
    keys = {cache_key("groups.count", [], t) for t in tasks}
    await until(lambda: keys <= cache_keys(), 10, "all 400 results cached")
    second = await submit(server, "/groups/cached", tasks, cache="hit")
    now = await status(server, "/groups/cached", second["group_id"])
    assert now == {**done, "group_id": second["group_id"]}
    assert g.runs(c) == 400


async def test_a_signature_route_keeps_its_fixed_arguments(prod: Producer) -> None:
    c = counter()
    srv = Server(routes(tcelery_group_routes(
        r"/sig", g.count.s(counter=c).set(queue=g.IDLE_QUEUE), producer=prod, timeout=WAIT)))
    try:
        purge(g.IDLE_QUEUE)
        body = error_of(await srv.fetch("/sig", "POST", json.dumps(
            {"tasks": [{"x": 1}, {"x": 2, "counter": "mine"}]}), JSON), 400)
        assert "'counter' is fixed by the route" in body["error"]["message"]
        assert await asyncio.to_thread(queue_depth, g.IDLE_QUEUE) == 0
        sent = await submit(srv, "/sig", [{"x": 1}, {"x": 2}])
        assert await asyncio.to_thread(queue_depth, g.IDLE_QUEUE) == 2  # the signature's queue
        purge(g.IDLE_QUEUE)
        response = await srv.fetch(f"/sig/{sent['group_id']}", "DELETE")
        assert body_of(response)["revoked"] == sent["task_ids"]
    finally:
        srv.close()
    # the same signature on the worker's queue: the fixed kwarg reaches every member
    srv = Server(routes(tcelery_group_routes(r"/sig", g.count.s(counter=c), producer=prod,
                                             timeout=WAIT)))
    try:
        sent = await submit(srv, "/sig", [{"x": 1}, {"x": 2}])
        assert (await status(srv, "/sig", sent["group_id"], wait=WAIT))["results"] == [2, 4]
        assert g.runs(c) == 2
    finally:
        srv.close()


async def test_an_overloaded_producer_sends_nothing(group_worker: CeleryWorker) -> None:
    small = Producer(g.app, result_timeout=20, max_pending=3)
    srv = Server(routes(tcelery_group_routes(r"/small", g.count, queue=g.IDLE_QUEUE,
                                             producer=small)))
    try:
        purge(g.IDLE_QUEUE)
        groups_before = group_keys()
        response = await post_group(srv, "/small", [[1], [2], [3], [4]])
        body = error_of(response, 503)
        assert body["error"]["type"] == "Overloaded" and "Retry-After" in response.headers
        assert await asyncio.to_thread(queue_depth, g.IDLE_QUEUE) == 0
        assert group_keys() == groups_before
    finally:
        srv.close()
        await small.close()


@pytest.mark.timeout(60)
async def test_delete_with_terminate_stops_running_members(server: Server) -> None:
    sent = await submit(server, "/groups/sleep", [[30], [30]])
    gid = sent["group_id"]
    await asyncio.sleep(1.0)  # both running (four pool processes, nothing else queued)
    assert error_of(await server.fetch(f"/groups/sleep/{gid}?terminate=maybe", "DELETE"),
                    400)["error"]["argument"] == "terminate"
    start = time.monotonic()
    response = await server.fetch(f"/groups/sleep/{gid}?terminate=true", "DELETE")
    assert body_of(response) == {"group_id": gid, "revoked": sent["task_ids"]}
    done = await status(server, "/groups/sleep", gid, wait=WAIT)
    assert time.monotonic() - start < 10
    assert done["states"] == ["REVOKED", "REVOKED"] and done["processed"] is True


async def test_methods_not_allowed(server: Server) -> None:
    sent = await submit(server, "/groups/where", [[1]])
    gid = sent["group_id"]
    for method, path in (("POST", f"/groups/where/{gid}"), ("PUT", f"/groups/where/{gid}"),
                         ("POST", f"/groups/where/{gid}/events"),
                         ("DELETE", f"/groups/where/{gid}/events"),
                         ("GET", "/groups/where"), ("DELETE", "/groups/where")):
        assert (await server.fetch(path, method, b"" if method in ("POST", "PUT") else None)
                ).code == 405, (method, path)
    await status(server, "/groups/where", gid, wait=WAIT)


BAD_BODIES = [
    ('{"tasks": []}', "tasks is empty"),
    ('{"tasks": [{"x": 1}, 5]}', "tasks[1] is a number"),
    ('{"tasks": [{"x": 1}, "x"]}', "tasks[1] is a string"),
    ('{"tasks": [[1], null]}', "tasks[1] is null"),
    ('{"tasks": [true]}', "tasks[0] is a boolean"),
    ('{"tasks": [[1], [2], [3], [4], [5], [6]]}', "6 tasks is more than the limit of 5"),
    ('[{"x": 1}]', "must be an object, not list"),
    ('"tasks"', "must be an object, not str"),
    ('{"tasks": [[1]', "malformed JSON body"),
    ("", "malformed JSON body"),
    ('{"tasks": {"x": 1}}', '{"tasks": [...]}'),
    ('{"task": [[1]]}', '{"tasks": [...]}'),
    ('{"tasks": [[1]], "priority": 9}', "unknown field 'priority'"),
    ('{"tasks": [{"x": 1}, {"self": 2}]}', "tasks[1]: argument 'self'"),
    ('{"tasks": [NaN]}', "NaN"),
]


@pytest.mark.parametrize("body, problem", BAD_BODIES, ids=[b for b, _ in BAD_BODIES])
async def test_bad_group_bodies_send_nothing(server: Server, body: str, problem: str) -> None:
    purge(g.IDLE_QUEUE)
    groups_before, cache_before = group_keys(), cache_keys()
    for path in ("/groups/idle", "/groups/idle-cached"):
        response = await server.fetch(path, "POST", body, JSON)
        error = error_of(response, 400)
        assert error["error"]["type"] == "BadRequest"
        assert problem in error["error"]["message"], error
        assert "Location" not in response.headers
    await asyncio.sleep(0.2)
    assert await asyncio.to_thread(queue_depth, g.IDLE_QUEUE) == 0
    assert group_keys() == groups_before and cache_keys() == cache_before  # nothing saved


async def test_a_sound_body_on_the_idle_route_is_counted(server: Server) -> None:
    """The control for the test above: what is sent to the idle queue stays to be counted."""
    purge(g.IDLE_QUEUE)
    sent = await submit(server, "/groups/idle", [[1], {"counter": "x", "x": 2}] + [[3]] * 3)
    assert await asyncio.to_thread(queue_depth, g.IDLE_QUEUE) == 5
    assert g.app.backend.get_key_for_group(sent["group_id"]) in group_keys()
    purge(g.IDLE_QUEUE)


def _noop() -> None:
    return None


def test_factory_errors() -> None:
    rpc_app = Celery("rpc_app", broker=BROKER_URL, backend="rpc://", set_as_current=False)
    rpc_task = rpc_app.task(name="rpc.t")(_noop)
    with pytest.raises(ConfigurationError) as caught:
        tcelery_group_routes(r"/g", rpc_task)
    assert "rpc://" in str(caught.value) and "redis://" in str(caught.value)
    with pytest.raises(ConfigurationError, match="redis://"):
        tcelery_group_routes(r"/g", "rpc.t", producer=Producer(rpc_app))
    sqlite_app = Celery("sqlite_app", broker=BROKER_URL, backend="db+sqlite:///:memory:",
                        set_as_current=False)
    sqlite_task = sqlite_app.task(name="sqlite.t")(_noop)
    tcelery_group_routes(r"/g", sqlite_task)  # groups work on a database backend...
    for factory in (lambda **o: tcelery_group_routes(r"/g", sqlite_task, **o),
                    lambda **o: tcelery_routes(r"/g", get_tasks=[sqlite_task], **o)):
        with pytest.raises(ConfigurationError) as caught:
            factory(cache=60)  # ... the cache does not
        assert "db+sqlite://" in str(caught.value) and "redis://" in str(caught.value)
    with pytest.raises(ConfigurationError, match="fire-and-forget"):
        tcelery_async_routes(r"/g", post_tasks=[g.count], cache=60)
    for bad in (0, -1, "60", True, float("nan")):
        with pytest.raises(ConfigurationError, match="cache"):
            tcelery_group_routes(r"/g", g.count, cache=bad)
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(ConfigurationError, match="max_group_size"):
            tcelery_group_routes(r"/g", g.count, max_group_size=bad)
    bare = Celery("bare", broker=BROKER_URL, set_as_current=False)
    with pytest.raises(ConfigurationError, match="result backend"):
        tcelery_group_routes(r"/g", bare.task(name="bare.t")(_noop))
