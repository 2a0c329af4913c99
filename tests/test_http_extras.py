"""What the newcomer's commit added, through a real Tornado server, RabbitMQ and worker:
HEAD and OPTIONS on every route kind, ``cors=``, ``self.request.body`` in custom handlers,
the signature check before sending, ``revoke_on_timeout`` and the plain 503 bodies."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tcelery_req_handler import (
    BrokerUnavailable,
    ConfigurationError,
    Producer,
    TCeleryAsyncHandler,
    TCeleryReqHandler,
    routes,
    tcelery_async_routes,
    tcelery_group_routes,
    tcelery_routes,
    tcelery_status_routes,
)
from tests import worker_app as w
from tests.conftest import blocking_connection
from tests.test_http import Server, body_of, error_of
from tests.workers import CeleryWorker

JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
EXPOSED = "Location, Retry-After, X-Cache"
CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Expose-Headers",
                "Access-Control-Allow-Methods", "Access-Control-Allow-Headers",
                "Access-Control-Max-Age")


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def _fire_sentinel(srv: Server, path: Path) -> None:
    """A task sent after the refused ones has run, and a moment more: had a refused request
    sent anything, the same queue and worker would have run it by now."""
    response = await srv.fetch("/touch-fire", "POST", json.dumps({"path": str(path)}), JSON)
    assert response.code == 202, response.body
    await _until(path.exists, 10, "the sentinel task never ran")
    await asyncio.sleep(0.5)


def _dead_port() -> int:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def server(producer: Producer) -> AsyncIterator[Server]:
    common = {"producer": producer}
    srv = Server(routes(
        tcelery_routes(r"/add/(\d+)/(\d+)", get_tasks=[w.add_ints], **common),
        tcelery_routes(r"/echo", get_tasks=[w.echo], post_tasks=[w.echo], **common),
        tcelery_routes(r"/post-only", post_tasks=[w.echo], **common),
        tcelery_async_routes(r"/fire", get_tasks=[w.echo], put_tasks=[w.echo], **common),
        tcelery_routes(r"/touch", post_tasks=[w.touch], **common),
        tcelery_async_routes(r"/touch-fire", post_tasks=[w.touch], **common),
        tcelery_routes(r"/touch-by-name", post_tasks=["tests.worker_app.touch"], **common),
        tcelery_routes(r"/add", get_tasks=[w.add], post_tasks=[w.add.s(1)], **common),
        tcelery_routes(r"/partial/(\d+)/(\d+)", get_tasks=[w.add.s(1)], **common),
        # The second task refuses what the first takes: neither may be sent.
        tcelery_routes(r"/multi", post_tasks=[w.touch, w.add], **common),
        tcelery_async_routes(r"/multi-fire", post_tasks=[w.touch, w.add], **common),
        tcelery_async_routes(r"/multi-fire-ok", post_tasks=[w.touch, w.echo], **common),
        tcelery_routes(r"/cors", get_tasks=[w.echo], post_tasks=[w.echo],
                       cors="https://app.example", **common),
        tcelery_routes(r"/cors-any", get_tasks=[w.echo], cors="*", **common),
        tcelery_async_routes(r"/cors-list", post_tasks=[w.echo],
                             cors=["https://a.example", "https://b.example:8443/"], **common),
        tcelery_status_routes("/tasks", cors="https://app.example", **common),
    ))
    yield srv
    srv.close()


# ------------------------------------------------------------------------- 1. HEAD, OPTIONS


async def test_head_runs_the_get_and_answers_without_a_body(server: Server) -> None:
    get = await server.fetch("/add/2/40")
    head = await server.fetch("/add/2/40", "HEAD")
    assert (get.code, body_of(get)) == (200, 42)
    assert head.code == 200 and head.body == b""
    assert head.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert head.headers["Content-Length"] == get.headers["Content-Length"] == "2"
    # An error of the GET is the HEAD's too, without its body.
    head = await server.fetch("/echo?self=1", "HEAD")
    assert head.code == 400 and head.body == b""


async def test_head_where_there_is_no_get_is_a_405(server: Server) -> None:
    for path, allowed in (("/post-only", "POST"), ("/touch", "POST")):
        response = await server.fetch(path, "HEAD")
        assert response.code == 405 and response.body == b""
        assert response.headers["Allow"] == allowed


async def test_options_answers_204_with_the_routes_verbs(server: Server) -> None:
    for path, allow in (("/add/1/2", "GET, HEAD, OPTIONS"),
                        ("/echo", "GET, POST, HEAD, OPTIONS"),
                        ("/post-only", "POST, OPTIONS"),
                        ("/fire", "GET, PUT, HEAD, OPTIONS")):
        response = await server.fetch(path, "OPTIONS")
        assert response.code == 204, path
        assert response.headers["Allow"] == allow, path
        assert response.body == b""
        assert "Content-Type" not in response.headers
        assert not any(name in response.headers for name in CORS_HEADERS)  # no cors= here
    # The verbs without tasks are still 405s, whose Allow lists the route's verbs only.
    response = await server.fetch("/post-only", "GET")
    assert error_of(response, 405)["error"]["allowed"] == ["POST"]
    assert response.headers["Allow"] == "POST"


async def test_head_on_fire_and_forget_sends_the_get(server: Server) -> None:
    response = await server.fetch("/fire?a=1", "HEAD")
    assert response.code == 202 and response.body == b""


async def test_status_routes_answer_head_and_options(server: Server) -> None:
    fired = body_of(await server.fetch("/fire?x=1"))["task_ids"][0]  # recorded for /tasks
    got = await server.fetch(f"/tasks/{fired}?wait=10")
    assert body_of(got)["state"] == "SUCCESS"
    head = await server.fetch(f"/tasks/{fired}", "HEAD")
    assert head.code == 200 and head.body == b""
    assert head.headers["Content-Length"] == got.headers["Content-Length"]
    head = await server.fetch("/tasks/no-such-task", "HEAD")  # rpc:// knows only its own
    assert head.code == 404 and head.body == b""
    options = await server.fetch(f"/tasks/{fired}", "OPTIONS")
    assert options.code == 204 and options.body == b""
    assert options.headers["Allow"] == "GET, DELETE, HEAD, OPTIONS"
    # An event stream would never end: HEAD does not run its GET.
    head = await server.fetch(f"/tasks/{fired}/events", "HEAD")
    assert head.code == 405 and head.body == b"" and head.headers["Allow"] == "GET"
    options = await server.fetch(f"/tasks/{fired}/events", "OPTIONS")
    assert options.code == 204 and options.headers["Allow"] == "GET, OPTIONS"


async def test_group_routes_answer_options_and_cors(workers: dict[str, CeleryWorker]) -> None:
    # Nothing is sent or read here: a producer that never connects builds the routes.
    redis_app = w.make_app(backend="redis://127.0.0.1:6379/0")
    grouped = Producer(redis_app)
    srv = Server(tcelery_group_routes("/grouptasks", w.add, producer=grouped,
                                      cors="https://app.example"))
    try:
        origin = {"Origin": "https://app.example"}
        for path, allow in (("/grouptasks", "POST, OPTIONS"),
                            ("/grouptasks/some-group", "GET, DELETE, HEAD, OPTIONS"),
                            ("/grouptasks/some-group/events", "GET, OPTIONS")):
            response = await srv.fetch(path, "OPTIONS", headers={
                **origin, "Access-Control-Request-Method": "GET"})
            assert response.code == 204, path
            assert response.headers["Allow"] == allow
            assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert response.headers["Access-Control-Allow-Methods"] == allow
            assert response.headers["Access-Control-Allow-Headers"] == "Content-Type"
            response = await srv.fetch(path, "OPTIONS",
                                       headers={"Origin": "https://evil.example"})
            assert response.code == 204 and response.headers["Allow"] == allow
            assert not any(name in response.headers for name in CORS_HEADERS)
        response = await srv.fetch("/grouptasks/x/events", "HEAD", headers=origin)
        assert response.code == 405 and response.headers["Allow"] == "GET"
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    finally:
        srv.close()
        await grouped.close()


# ------------------------------------------------------------------------------- 2. CORS


def _assert_cors(response: Any, origin: str) -> None:
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert response.headers["Access-Control-Expose-Headers"] == EXPOSED
    assert response.headers["Vary"] == "Origin"


def _assert_no_cors(response: Any) -> None:
    assert not any(name in response.headers for name in CORS_HEADERS), response.headers
    assert "Vary" not in response.headers


async def test_cors_allowed_origin_gets_the_headers_on_answers_and_errors(
        server: Server) -> None:
    origin = {"Origin": "https://app.example"}
    response = await server.fetch("/cors?a=1", headers=origin)
    assert body_of(response) == {"args": [], "kwargs": {"a": "1"}}
    _assert_cors(response, "https://app.example")
    assert "Access-Control-Allow-Methods" not in response.headers  # a preflight's only
    # Errors too, so that a browser can read them.
    response = await server.fetch("/cors", "POST", b"{", {**JSON, **origin})
    assert error_of(response, 400)["error"]["message"].startswith("malformed JSON")
    _assert_cors(response, "https://app.example")
    response = await server.fetch("/cors", "DELETE", headers=origin)
    assert error_of(response, 405)["error"]["allowed"] == ["GET", "POST"]
    _assert_cors(response, "https://app.example")
    # Status routes take cors= too.
    response = await server.fetch("/tasks/no-such-task", headers=origin)
    assert error_of(response, 404)["task_id"] == "no-such-task"
    _assert_cors(response, "https://app.example")


async def test_cors_disallowed_or_absent_origin_gets_no_cors_headers(server: Server) -> None:
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "https://app.example:444"},
                    {"Origin": "null"}, {}):
        response = await server.fetch("/cors?a=1", headers=headers)
        assert response.code == 200
        _assert_no_cors(response)
        response = await server.fetch("/cors", "OPTIONS", headers={
            **headers, "Access-Control-Request-Method": "POST"})
        assert response.code == 204 and response.headers["Allow"] == "GET, POST, HEAD, OPTIONS"
        _assert_no_cors(response)
    # A route without cors= never answers CORS, whatever the origin.
    _assert_no_cors(await server.fetch("/echo", headers={"Origin": "https://app.example"}))


async def test_cors_preflight(server: Server) -> None:
    response = await server.fetch("/cors", "OPTIONS", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-token"})
    assert response.code == 204 and response.body == b""
    _assert_cors(response, "https://app.example")
    assert response.headers["Allow"] == "GET, POST, HEAD, OPTIONS"
    assert response.headers["Access-Control-Allow-Methods"] == "GET, POST, HEAD, OPTIONS"
    assert response.headers["Access-Control-Allow-Headers"] == "content-type, x-token"
    assert response.headers["Access-Control-Max-Age"] == "600"
    response = await server.fetch("/cors", "OPTIONS", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
    assert response.headers["Access-Control-Allow-Headers"] == "Content-Type"
    response = await server.fetch("/tasks/any-id", "OPTIONS", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "DELETE"})
    assert response.code == 204
    _assert_cors(response, "https://app.example")
    assert response.headers["Access-Control-Allow-Methods"] == "GET, DELETE, HEAD, OPTIONS"


async def test_cors_star_and_lists_of_origins(server: Server) -> None:
    for origin in ("https://anything.example", "http://localhost:3000"):
        response = await server.fetch("/cors-any", headers={"Origin": origin})
        assert response.code == 200
        _assert_cors(response, origin)  # the origin itself, not "*"
    _assert_no_cors(await server.fetch("/cors-any"))
    for origin in ("https://a.example", "https://b.example:8443"):  # (a trailing / dropped)
        response = await server.fetch("/cors-list", "POST", b"x=1", {**FORM, "Origin": origin})
        assert response.code == 202
        _assert_cors(response, origin)
    response = await server.fetch("/cors-list", "POST", b"x=1",
                                  {**FORM, "Origin": "https://c.example"})
    assert response.code == 202
    _assert_no_cors(response)


@pytest.mark.parametrize("value", ["", "app.example", [], ["https://a.example", 3], 42,
                                   ["*", None], {"https://a.example": True}])
def test_bad_cors_values_are_refused_when_the_route_is_built(value: Any) -> None:
    for build in (lambda: tcelery_routes("/x", get_tasks=[w.add], cors=value),
                  lambda: tcelery_async_routes("/x", get_tasks=[w.add], cors=value),
                  lambda: tcelery_status_routes("/tasks", cors=value)):
        with pytest.raises(ConfigurationError, match="cors must be"):
            build()
    grouped = Producer(w.make_app(backend="redis://127.0.0.1:6379/0"))
    with pytest.raises(ConfigurationError, match="cors must be"):
        tcelery_group_routes("/g", w.add, producer=grouped, cors=value)


# ---------------------------------------------------------- 3. the body in custom handlers


class BodyReader(TCeleryReqHandler):
    """A custom verb method reading the request as in any Tornado handler."""

    async def post(self, *args: str) -> None:
        name = self.get_body_argument("name", None)
        done = await self.task_handler.post_one(0, got=name)
        self.write_json({"body": self.request.body.decode(), "body_name": name,
                         "argument_name": self.get_argument("name", None),
                         "body_arguments": sorted(self.request.body_arguments),
                         "task_arguments": self.task_arguments(*args)[1],
                         "result": done.result})


class BodyReaderMixin:
    """The same as a mixin (placed before the library's handler)."""

    task_handler: Any

    async def post(self: Any) -> None:
        fired = await self.task_handler.post_async(name=self.get_body_argument("name"))
        self.write_json({"name": self.get_argument("name"), "fired": len(fired),
                         "length": len(self.request.body)}, 202)


async def test_a_custom_handler_reads_the_body_and_body_arguments(producer: Producer) -> None:
    srv = Server(routes(
        tcelery_routes("/read", post_tasks=[w.echo], handler=BodyReader, producer=producer),
        tcelery_async_routes("/read-fire", post_tasks=[w.echo], handler=BodyReaderMixin,
                             producer=producer)))
    try:
        form = "name=ann&city=Oslo&name=bea"
        body = body_of(await srv.fetch("/read?q=1", "POST", form, FORM))
        assert body == {
            "body": form, "body_name": "bea", "argument_name": "bea",
            "body_arguments": ["city", "name"],
            "task_arguments": {"q": "1", "name": "bea", "city": "Oslo"},
            "result": {"args": [], "kwargs": {"got": "bea"}}}
        # A JSON body: request.body holds it; Tornado parses no body arguments from it.
        raw = json.dumps({"name": "cy", "n": [1, 2]})
        body = body_of(await srv.fetch("/read", "POST", raw, JSON))
        assert body == {"body": raw, "body_name": None, "argument_name": None,
                        "body_arguments": [], "task_arguments": {"name": "cy", "n": [1, 2]},
                        "result": {"args": [], "kwargs": {"got": None}}}
        # The body arguments of a multipart form as well.
        multipart = (b'--XyZ\r\nContent-Disposition: form-data; name="name"\r\n\r\ndee\r\n'
                     b"--XyZ--\r\n")
        body = body_of(await srv.fetch("/read", "POST", multipart,
                                       {"Content-Type": "multipart/form-data; boundary=XyZ"}))
        assert body["body_name"] == body["argument_name"] == "dee"
        assert body["body"] == multipart.decode()
        response = await srv.fetch("/read-fire", "POST", "name=eve", FORM)
        assert response.code == 202
        assert body_of(response) == {"name": "eve", "fired": 1, "length": 8}
    finally:
        srv.close()


# ------------------------------------------------------------------ 4. signatures checked


def _signature_error(response: Any, task: str, detail: str,
                     argument: str | None, *, suggestion: str | None = None) -> None:
    """``detail`` is Python's TypeError text. Python >= 3.13 adds ". Did you mean 'x'?" to
    an unexpected keyword close to a parameter's name: ``suggestion`` is that name, expected
    exactly there (and nowhere before 3.13)."""
    error = error_of(response, 400)["error"]
    if suggestion is not None and sys.version_info >= (3, 13):
        detail = f"{detail}. Did you mean {suggestion!r}?"
    expected = {"type": "BadRequest",
                "message": f"task {task} cannot take these arguments: {detail}"}
    if argument is not None:
        expected["argument"] = argument
    assert error == expected


async def test_a_missing_or_unexpected_argument_is_a_400_and_nothing_is_sent(
        server: Server, tmp_path: Path) -> None:
    touch = "tests.worker_app.touch"
    never = tmp_path / "never"
    for path in ("/touch", "/touch-fire", "/touch-by-name"):
        response = await server.fetch(path, "POST", b"{}", JSON)
        _signature_error(response, touch,
                         "missing 1 required positional argument: 'path'", "path")
        response = await server.fetch(path, "POST",
                                      json.dumps({"path": str(never), "mode": 1}), JSON)
        _signature_error(response, touch, "got an unexpected keyword argument 'mode'", "mode")
        # Any name is named exactly, quotes and the empty name included.
        response = await server.fetch(f"{path}?it%27s=1", "POST", f"path={never}", FORM)
        _signature_error(response, touch, "got an unexpected keyword argument 'it's'", "it's")
        response = await server.fetch(f"{path}?=1", "POST", f"path={never}", FORM)
        _signature_error(response, touch, "got an unexpected keyword argument ''", "")
    await _fire_sentinel(server, tmp_path / "sentinel")
    assert not never.exists()


async def test_signature_partials_and_path_groups_are_checked_too(server: Server) -> None:
    add = "tests.worker_app.add"
    _signature_error(await server.fetch("/add"), add,
                     "missing 2 required positional arguments: 'x' and 'y'", "x")
    _signature_error(await server.fetch("/add?x=1&z=2"), add,
                     "got an unexpected keyword argument 'z'", "z")
    _signature_error(await server.fetch("/add", "POST", b"{}", JSON), add,  # add.s(1)
                     "missing 1 required positional argument: 'y'", "y")
    _signature_error(await server.fetch("/add", "POST", b'{"x": 5, "y": 2}', JSON), add,
                     "got multiple values for argument 'x'", "x")
    # The partial 1 and two path groups are three positional arguments: none is named.
    _signature_error(await server.fetch("/partial/2/3"), add,
                     "takes 2 positional arguments but 3 were given", None)
    # What fits is sent and answered.
    assert body_of(await server.fetch("/add?x=2&y=3")) == "23"  # (query values are str)
    assert body_of(await server.fetch("/add", "POST", b'{"y": 41}', JSON)) == 42


async def test_on_several_tasks_every_one_is_checked_before_any_is_sent(
        server: Server, tmp_path: Path) -> None:
    never = tmp_path / "never"
    for path in ("/multi", "/multi-fire"):  # touch takes it, add does not
        response = await server.fetch(path, "POST", json.dumps({"path": str(never)}), JSON)
        _signature_error(response, "tests.worker_app.add",
                         "got an unexpected keyword argument 'path'", "path")
    fired = tmp_path / "fired"  # both take it: both are sent
    response = await server.fetch("/multi-fire-ok", "POST",
                                  json.dumps({"path": str(fired)}), JSON)
    assert response.code == 202 and len(body_of(response)["task_ids"]) == 2
    await _until(fired.exists, 10, "the tasks that fit were not sent")
    await _fire_sentinel(server, tmp_path / "sentinel")
    assert not never.exists()


async def test_a_task_name_of_an_app_not_yet_finalized_is_checked(
        workers: dict[str, CeleryWorker], tmp_path: Path) -> None:
    # A fresh app: ``@app.task`` is shared, so it registers touch once it is finalized; a
    # route naming touch is checked all the same (the library finalizes it, as Celery does).
    fresh = w.make_app()
    assert not fresh.finalized and "tests.worker_app.touch" not in fresh._tasks
    sender = Producer(fresh)
    await sender.connect()
    srv = Server(tcelery_routes("/by-name", post_tasks=["tests.worker_app.touch"],
                                producer=sender))
    try:
        response = await srv.fetch("/by-name", "POST", b'{"paths": "x"}', JSON)
        _signature_error(response, "tests.worker_app.touch",
                         "got an unexpected keyword argument 'paths'", "paths",
                         suggestion="path")
        target = tmp_path / "by-name"
        response = await srv.fetch("/by-name", "POST", json.dumps({"path": str(target)}), JSON)
        assert body_of(response) == str(target) and target.exists()
    finally:
        srv.close()
        await sender.close()


async def test_tasks_that_skip_argument_checks_are_left_to_the_worker(
        workers: dict[str, CeleryWorker]) -> None:
    unchecked = w.make_app()
    unchecked.strict_typing = False  # Celery's own opt-out of argument checks
    sender = Producer(unchecked)
    await sender.connect()
    srv = Server(tcelery_routes("/fail", get_tasks=["tests.worker_app.fail"], producer=sender))
    try:
        body = error_of(await srv.fetch("/fail?oops=1"), 500)
        assert body["error"]["type"] == "TypeError" and body["state"] == "FAILURE"
    finally:
        srv.close()
        await sender.close()


# ------------------------------------------------------------------ 5. revoke_on_timeout


async def test_revoke_on_timeout_revokes_the_task_at_the_504(
        producer: Producer, tmp_path: Path) -> None:
    revoked, kept = tmp_path / "revoked", tmp_path / "kept"
    # sleep(5), then (its link) touch: the file appears only if the sleep completed.
    srv = Server(routes(
        tcelery_routes("/revoked", get_tasks=[w.sleep.s(5).set(link=w.touch.si(str(revoked)))],
                       timeout=1, revoke_on_timeout=True, producer=producer),
        tcelery_routes("/kept", get_tasks=[w.sleep.s(5).set(link=w.touch.si(str(kept)))],
                       timeout=1, producer=producer),
        tcelery_status_routes("/tasks", producer=producer)))
    try:
        started = time.monotonic()
        responses = await asyncio.gather(srv.fetch("/revoked"), srv.fetch("/kept"))
        assert time.monotonic() - started < 3
        bodies = [error_of(response, 504) for response in responses]
        for body in bodies:
            assert body["error"]["type"] == "TaskTimeout"
            assert body["state"] in ("PENDING", "STARTED")
        revoked_id, kept_id = (body["task_id"] for body in bodies)
        status = body_of(await srv.fetch(f"/tasks/{revoked_id}?wait=10"))
        assert status["state"] == "REVOKED"
        assert status["error"]["type"] == "TaskRevokedError"
        assert time.monotonic() - started < 4  # terminated: it did not sleep its 5 s
        # The control ran to its end (and its link); the revoked one never did.
        await _until(kept.exists, 15, "the task without revoke_on_timeout never completed")
        assert body_of(await srv.fetch(f"/tasks/{kept_id}?wait=10"))["state"] == "SUCCESS"
        await asyncio.sleep(0.5)
        assert not revoked.exists()
        assert body_of(await srv.fetch(f"/tasks/{revoked_id}"))["state"] == "REVOKED"
    finally:
        srv.close()


async def test_revoke_on_timeout_sends_with_expires_the_timeout(
        producer: Producer) -> None:
    queue = f"{w.PREFIX}.unconsumed"  # no worker reads it: the message stays to be read
    srv = Server(routes(
        tcelery_routes("/expiring", get_tasks=[w.add.s(1, 2)], timeout=1,
                       revoke_on_timeout=True, queue=queue, producer=producer),
        tcelery_routes("/plain", get_tasks=[w.add.s(1, 2)], timeout=1, queue=queue,
                       producer=producer)))
    conn = blocking_connection()
    channel = conn.channel()
    channel.queue_declare(queue, durable=True)  # as Celery declares it

    async def message_of(path: str) -> tuple[Any, dict[str, Any]]:
        """The message the request sent, read while it waits (an expiring message is
        dropped by RabbitMQ at its expiry, so it must be read before), and the 504."""
        sent = datetime.now(timezone.utc)
        waiting = asyncio.ensure_future(srv.fetch(path))
        deadline = time.monotonic() + 0.9
        while (got := channel.basic_get(queue, auto_ack=True))[0] is None:
            assert time.monotonic() < deadline, "the task was not sent to its queue"
            await asyncio.sleep(0.02)
        body = error_of(await waiting, 504)
        assert body["state"] == "PENDING"
        _, properties, _ = got
        assert properties.headers["id"] == body["task_id"]
        return properties, {"sent": sent}

    try:
        properties, at = await message_of("/expiring")
        expires = datetime.fromisoformat(properties.headers["expires"])
        assert 0.5 <= (expires - at["sent"]).total_seconds() <= 1.5, (at, expires)
        assert 0 < int(properties.expiration) <= 1000  # RabbitMQ drops it then too
        properties, _ = await message_of("/plain")
        assert properties.headers["expires"] is None and properties.expiration is None
    finally:
        channel.queue_delete(queue)
        channel.exchange_delete(queue)  # the producer declared Celery's exchange of that name
        conn.close()
        srv.close()


def test_revoke_on_timeout_is_refused_where_nothing_waits() -> None:
    with pytest.raises(ConfigurationError, match="routes that wait"):
        tcelery_async_routes("/x", post_tasks=[w.add], revoke_on_timeout=True)
    with pytest.raises(ConfigurationError, match="True or False"):
        tcelery_routes("/x", get_tasks=[w.add], revoke_on_timeout="yes")
    (rule,) = tcelery_routes("/x", get_tasks=[w.add], revoke_on_timeout=True)
    assert rule.target.revoke_on_timeout is True
    assert issubclass(rule.target, TCeleryReqHandler)
    assert not issubclass(rule.target, TCeleryAsyncHandler)


# ------------------------------------------------------------------- 6. plain 503 bodies


async def test_broker_down_503_says_so_in_plain_words(workers: dict[str, CeleryWorker]
                                                      ) -> None:
    app = Celery("down", broker=f"amqp://guest:guest@127.0.0.1:{_dead_port()}//",
                 backend="rpc://", set_as_current=False)
    down = Producer(app, connect_timeout=1)
    srv = Server(tcelery_routes(r"/add/(\d+)/(\d+)", get_tasks=[w.add_ints], producer=down)
                 + tcelery_async_routes("/fire", post_tasks=[w.add], producer=down))
    try:
        for path, method, raw in (("/add/1/2", "GET", None), ("/fire", "POST", "x=1&y=2")):
            started = time.monotonic()
            response = await srv.fetch(path, method, raw, FORM)
            assert time.monotonic() - started < 3  # connect_timeout=1
            assert response.code == 503, response.body
            retry = response.headers["Retry-After"]
            assert retry.isdigit() and int(retry) >= 1
            assert body_of(response) == {"error": {
                "type": "BrokerUnavailable",
                "message": f"the broker is unavailable; retry in {retry} s"}}
            for leak in (b"pika", b"AMQP", b"Connection", b"Error", b"refused", b"127.0.0.1"):
                assert leak not in response.body
        with pytest.raises(BrokerUnavailable) as refused:
            await down.apply_async(w.add, (1, 2))
        assert refused.value.service == "broker"
    finally:
        srv.close()
        await down.close()


async def test_result_backend_down_503_says_so_in_plain_words(
        workers: dict[str, CeleryWorker]) -> None:
    app = w.make_app(backend=f"redis://127.0.0.1:{_dead_port()}/0")
    down = Producer(app, connect_timeout=1)
    srv = Server(tcelery_routes(r"/add/(\d+)/(\d+)", get_tasks=[w.add_ints], producer=down))
    try:
        with pytest.raises(BrokerUnavailable) as refused:
            await down.connect()
        assert refused.value.service == "result backend"
        response = await srv.fetch("/add/1/2")
        assert response.code == 503, response.body
        retry = response.headers["Retry-After"]
        assert body_of(response) == {"error": {
            "type": "BrokerUnavailable",
            "message": f"the result backend is unavailable; retry in {retry} s"}}
        for leak in (b"redis", b"Redis", b"Error", b"refused", b"127.0.0.1"):
            assert leak not in response.body
    finally:
        srv.close()
        await down.close()
