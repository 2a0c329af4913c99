"""Every row of the README's HTTP table, through a real Tornado server, RabbitMQ and worker."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from tcelery_req_handler import (
    ConfigurationError,
    Producer,
    TCeleryNotFoundHandler,
    TCeleryReqHandler,
    routes,
    tcelery_async_routes,
    tcelery_routes,
)
from tests import worker_app as w

Fetch = Callable[..., "asyncio.Future[HTTPResponse]"]


class Server:
    """A real Tornado HTTP server on a free loopback port, in the test's event loop."""

    def __init__(self, rules: list[Any] | Application, **settings: Any) -> None:
        app = rules if isinstance(rules, Application) else Application(
            rules, default_handler_class=TCeleryNotFoundHandler, **settings)
        sock, self.port = bind_unused_port()
        self.server = HTTPServer(app, max_body_size=64 * 1024 * 1024)
        self.server.add_sockets([sock])
        self.client = AsyncHTTPClient(force_instance=True)

    async def fetch(self, path: str, method: str = "GET", body: bytes | str | None = None,
                    headers: dict[str, str] | None = None, **kwargs: Any) -> HTTPResponse:
        if body is None and method in ("POST", "PUT", "PATCH") and "body_producer" not in kwargs:
            body = b""
        return await self.client.fetch(
            f"http://127.0.0.1:{self.port}{path}", method=method, body=body,
            headers=headers, raise_error=False, allow_nonstandard_methods=True,
            request_timeout=30, **kwargs)

    def close(self) -> None:
        self.client.close()
        self.server.stop()


def body_of(response: HTTPResponse) -> Any:
    assert response.headers["Content-Type"].startswith("application/json"), response.body
    return json.loads(response.body)


def error_of(response: HTTPResponse, status: int) -> dict[str, Any]:
    assert response.code == status, response.body
    body = body_of(response)
    assert set(body["error"]) >= {"type", "message"}
    assert "traceback" not in body
    return body


@pytest.fixture
async def server(producer: Producer, tmp_path: Path) -> AsyncIterator[Server]:
    common = {"producer": producer}
    rules = routes(
        tcelery_routes(r"/add/(\d+)/(\d+)", get_tasks=[w.add_ints], **common),
        tcelery_routes(r"/echo/(?P<name>[^/]+)", get_tasks=[w.echo], post_tasks=[w.echo],
                       put_tasks=[w.echo], delete_tasks=["tests.worker_app.echo"], **common),
        tcelery_routes(r"/echo", get_tasks=[w.echo], post_tasks=[w.echo],
                       max_body_size=1024, **common),
        tcelery_routes(r"/many/(\d+)", get_tasks=[w.add_ints.s(1), "tests.worker_app.echo",
                                                  w.where_am_i.s().set(queue=w.OTHER_QUEUE)],
                       **common),
        tcelery_routes(r"/fixed", get_tasks=[w.echo.s(fixed="yes")], **common),
        tcelery_routes(r"/fail", get_tasks=[w.fail], post_tasks=[w.fail], **common),
        tcelery_routes(r"/fail404", get_tasks=[w.fail], error_statuses={"ValueError": 404},
                       **common),
        tcelery_routes(r"/slow", get_tasks=[w.sleep.s(3)], timeout=0.5, **common),
        tcelery_routes(r"/expired", get_tasks=[w.add.s(1, 2)], countdown=2, expires=1,
                       **common),
        tcelery_async_routes(r"/fire", post_tasks=[w.touch, w.touch], **common),
        # The second task fixes ``path``: a request setting it is refused by that one.
        tcelery_async_routes(r"/fire-fixed", post_tasks=[
            w.touch, w.touch.s(path=str(tmp_path / "fixed"))], **common),
        tcelery_routes(r"/wait-fixed", post_tasks=[
            w.touch, w.touch.s(path=str(tmp_path / "fixed"))], **common),
        [(r"/plain", _PlainHandler)],
    )
    srv = Server(rules)
    yield srv
    srv.close()


class _PlainHandler(RequestHandler):
    def get(self) -> None:
        self.write({"plain": True})


async def test_one_task_answers_200_with_its_result_as_json(server: Server) -> None:
    response = await server.fetch("/add/2/40")
    assert response.code == 200
    assert body_of(response) == 42


async def test_several_tasks_answer_a_list_in_order(server: Server) -> None:
    response = await server.fetch("/many/5")
    assert response.code == 200
    added, echoed, where = body_of(response)
    assert added == 6  # the signature's partial arg (1) comes first, then the path group
    assert echoed == {"args": ["5"], "kwargs": {}}
    assert where["routing_key"] == w.OTHER_QUEUE  # the signature's options apply


async def test_arguments_from_path_query_form_and_json(server: Server) -> None:
    got = body_of(await server.fetch("/echo/ann?age=3&age=4"))
    assert got == {"args": [], "kwargs": {"name": "ann", "age": "4"}}  # last value wins
    got = body_of(await server.fetch(
        "/echo/bob", "POST", "city=Oslo&zip=1",
        {"Content-Type": "application/x-www-form-urlencoded"}))
    assert got["kwargs"] == {"name": "bob", "city": "Oslo", "zip": "1"}
    got = body_of(await server.fetch("/echo/cy", "PUT", json.dumps({"n": [1, {"k": None}]}),
                                     {"Content-Type": "application/json; charset=utf-8"}))
    assert got["kwargs"] == {"name": "cy", "n": [1, {"k": None}]}
    got = body_of(await server.fetch("/echo/dee", "DELETE"))
    assert got["kwargs"] == {"name": "dee"}


async def test_argument_names_are_free_and_read_as_utf8(server: Server) -> None:
    # Names that are parameters of the handler's own methods reach the task like any other.
    # (``self`` is refused by Celery's own task call in the worker: a TypeError, a 500.)
    got = body_of(await server.fetch("/echo/x?verb=2&index=3&spec=4&args=5&kwargs=6"))
    assert got["kwargs"] == {"name": "x", "verb": "2", "index": "3", "spec": "4", "args": "5",
                             "kwargs": "6"}
    got = body_of(await server.fetch("/echo/x?%C3%A9t%C3%A9=1", "POST", "%C3%B8=2",
                                     {"Content-Type": "application/x-www-form-urlencoded"}))
    assert got["kwargs"] == {"name": "x", "\u00e9t\u00e9": "1", "\u00f8": "2"}
    error = error_of(await server.fetch("/echo/x?%FF=1"), 400)["error"]
    assert error["message"] == "query argument name is not valid UTF-8"
    # Media types are case-insensitive: a form is a form however its type is spelled.
    got = body_of(await server.fetch("/echo/x", "POST", "a=1",
                                     {"Content-Type": "Application/X-WWW-Form-URLencoded"}))
    assert got["kwargs"] == {"name": "x", "a": "1"}


def _nested(depth: int) -> str:
    return '{"v": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


@pytest.mark.parametrize(("body", "message"), [
    ('{"v": NaN}', "JSON body contains NaN, which JSON does not allow"),
    ('{"v": -Infinity}', "JSON body contains -Infinity, which JSON does not allow"),
    ('{"v": ' + "9" * 5000 + "}", "JSON body has a value that cannot be read"),
    (_nested(65), "JSON body is nested deeper than 64 levels"),
    (_nested(500), "JSON body is nested deeper than 64 levels"),
    (_nested(5000), "JSON body is nested deeper than 64 levels"),
])
async def test_json_the_worker_or_response_could_not_take_is_a_400(
        server: Server, body: str, message: str) -> None:
    response = await server.fetch("/echo/x", "POST", body, {"Content-Type": "application/json"})
    assert error_of(response, 400)["error"]["message"].startswith(message)


async def test_json_nested_up_to_the_limit_is_passed_on(server: Server) -> None:
    got = body_of(await server.fetch("/echo/x", "POST", _nested(64),
                                     {"Content-Type": "application/json"}))
    value = got["kwargs"]["v"]
    depth = 1
    while value:
        value, depth = value[0], depth + 1
    assert depth == 63  # the object itself is level 1, then 63 nested lists


async def test_the_same_name_from_two_sources_is_a_400(server: Server) -> None:
    response = await server.fetch("/echo/ann?name=other")
    assert "'name'" in error_of(response, 400)["error"]["message"]
    response = await server.fetch("/echo?a=1", "POST", '{"a": 2}',
                                  {"Content-Type": "application/json"})
    assert error_of(response, 400)["error"]["argument"] == "a"
    response = await server.fetch("/fixed?fixed=no")
    assert "fixed by the route" in error_of(response, 400)["error"]["message"]
    assert body_of(await server.fetch("/fixed?other=1"))["kwargs"] == {
        "fixed": "yes", "other": "1"}


async def test_task_failure_is_a_500_without_traceback(server: Server) -> None:
    body = error_of(await server.fetch("/fail?message=kaput"), 500)
    assert body["error"] == {"type": "ValueError", "message": "kaput"}
    assert body["state"] == "FAILURE" and body["task_id"]


async def test_error_statuses_map_remote_exception_types(server: Server) -> None:
    body = error_of(await server.fetch("/fail404?message=no+such+thing"), 404)
    assert body["error"] == {"type": "ValueError", "message": "no such thing"}
    assert body["state"] == "FAILURE"


async def test_traceback_only_with_debug(producer: Producer) -> None:
    srv = Server(tcelery_routes("/fail", get_tasks=[w.fail], producer=producer), debug=True)
    try:
        body = body_of(await srv.fetch("/fail?message=kaput"))
        assert "ValueError: kaput" in body["traceback"]
    finally:
        srv.close()


async def test_revoked_task_is_a_409(server: Server) -> None:
    body = error_of(await server.fetch("/expired"), 409)
    assert body["state"] == "REVOKED" and body["task_id"]


async def test_timeout_is_a_504_with_task_id_and_last_state(server: Server) -> None:
    started = time.monotonic()
    body = error_of(await server.fetch("/slow"), 504)
    assert time.monotonic() - started < 3
    assert body["task_id"] and body["state"] in ("PENDING", "STARTED")
    assert body["error"]["type"] == "TaskTimeout"


async def test_broker_unavailable_is_a_503_with_retry_after(workers: object) -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    app = Celery("down", broker=f"amqp://guest:guest@127.0.0.1:{dead_port}//",
                 backend="rpc://", set_as_current=False)
    down = Producer(app, connect_timeout=1)
    srv = Server(tcelery_routes("/add/(\\d+)/(\\d+)", get_tasks=[w.add], producer=down)
                 + tcelery_async_routes("/fire", post_tasks=[w.add], producer=down))
    try:
        for path, method, body in (("/add/1/2", "GET", None), ("/fire", "POST", "x=1&y=2")):
            started = time.monotonic()
            response = await srv.fetch(path, method, body)
            assert time.monotonic() - started < 3
            body = error_of(response, 503)
            assert body["error"]["type"] == "BrokerUnavailable"
            assert int(response.headers["Retry-After"]) >= 1
    finally:
        srv.close()
        await down.close()


async def test_fire_and_forget_is_a_202_with_confirmed_task_ids(server: Server,
                                                                 tmp_path: Path) -> None:
    target = tmp_path / "fired"
    response = await server.fetch("/fire", "POST", json.dumps({"path": str(target)}),
                                  {"Content-Type": "application/json"})
    assert response.code == 202
    task_ids = body_of(response)["task_ids"]
    assert len(task_ids) == 2 and len(set(task_ids)) == 2
    deadline = time.monotonic() + 10
    while not target.exists():  # the worker really ran it
        assert time.monotonic() < deadline, "fire-and-forget task never ran"
        await asyncio.sleep(0.05)


async def test_a_request_one_task_refuses_sends_none_of_them(server: Server,
                                                             tmp_path: Path) -> None:
    refused = tmp_path / "refused"
    for path in ("/fire-fixed", "/wait-fixed"):
        response = await server.fetch(path, "POST", json.dumps({"path": str(refused)}),
                                      {"Content-Type": "application/json"})
        assert "fixed by the route" in error_of(response, 400)["error"]["message"]
    # A later task on the same queue has run, and a moment more: the refused ones never came.
    sentinel = tmp_path / "sentinel"
    response = await server.fetch("/fire", "POST", json.dumps({"path": str(sentinel)}),
                                  {"Content-Type": "application/json"})
    assert response.code == 202
    deadline = time.monotonic() + 10
    while not sentinel.exists():
        assert time.monotonic() < deadline, "the sentinel task never ran"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert not refused.exists() and not (tmp_path / "fixed").exists()


async def test_verb_without_tasks_is_a_405_with_allow(server: Server) -> None:
    for method in ("POST", "PATCH"):
        response = await server.fetch("/add/1/2", method)
        assert response.code == 405, method
        assert response.headers["Allow"] == "GET"
    head = await server.fetch("/add/1/2", "HEAD")  # the GET, without its body
    assert head.code == 200 and head.body == b""
    options = await server.fetch("/add/1/2", "OPTIONS")
    assert options.code == 204 and options.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert (await server.fetch("/fail", "OPTIONS")).headers["Allow"] == \
        "GET, POST, HEAD, OPTIONS"
    assert error_of(await server.fetch("/fail", "DELETE"), 405)["error"]["allowed"] == [
        "GET", "POST"]
    response = await server.fetch("/fail", "BREW")
    assert response.code == 405 and body_of(response)["error"]


async def test_malformed_or_non_object_json_is_a_400(server: Server) -> None:
    json_type = {"Content-Type": "application/json"}
    for raw, reason in ((b'{"a": ', "malformed JSON"), (b"[1, 2]", "must be an object"),
                        (b'"text"', "must be an object"), (b"\xff\xfe{}", "UTF-8"),
                        (b"[" * 100_000 + b"]" * 100_000, "")):
        body = error_of(await server.fetch("/echo/deep", "POST", raw, json_type), 400)
        assert reason in body["error"]["message"]


async def test_unsupported_content_type_is_a_415(server: Server) -> None:
    response = await server.fetch("/echo", "POST", b"<xml/>", {"Content-Type": "text/xml"})
    assert error_of(response, 415)["error"]["type"] == "UnsupportedMediaType"


async def test_body_over_the_limit_is_a_413(server: Server) -> None:
    json_type = {"Content-Type": "application/json"}
    big = json.dumps({"a": "x" * 2000})
    assert error_of(await server.fetch("/echo", "POST", big, json_type), 413)
    chunks = [big[i:i + 100].encode() for i in range(0, len(big), 100)]

    async def producer_(write: Callable[[bytes], Any]) -> None:
        for chunk in chunks:
            await write(chunk)

    response = await server.fetch("/echo", "POST", None, json_type,
                                  body_producer=producer_)  # chunked: no Content-Length
    assert error_of(response, 413)["error"]["limit"] == 1024


async def test_unknown_route_is_a_json_404(server: Server) -> None:
    body = error_of(await server.fetch("/nowhere"), 404)
    assert body["error"]["type"] == "NotFound"
    assert body_of(await server.fetch("/plain")) == {"plain": True}  # mixed route lists


class SeedStyleHandler(TCeleryReqHandler):
    """The seed's custom handler, for Tornado 6: split query and body, shape the output."""

    async def get(self, *args: str, **kwargs: str) -> None:
        kwargs2: dict[str, Any] = {
            "_query": {k: [v.decode() for v in vs]
                       for k, vs in self.request.query_arguments.items()},
            "_body": {}}
        response = await self.task_handler.get_one(0, *args, **kwargs2)
        if not response.result:
            self.write_json({"error": {"type": "NotFound", "message": "empty"}}, 404)
            return
        self.write_json({"wrapped": response.result, "status": response.status,
                         "task_id": response.task_id})


class ManyMixin:
    """A mixin handler (not a RequestHandler): uses X_many and X_async itself."""

    task_handler: Any

    async def post(self: Any, *args: str) -> None:
        done = await self.task_handler.post_many(*args, tag="m")
        fired = await self.task_handler.post_async(*args, tag="a")
        self.write_json({"many": [r.result for r in done], "fired": len(fired),
                         "uri_path": self.uri_path, "n_post": len(self.post_tasks)})


async def test_custom_handlers_subclass_and_mixin(producer: Producer) -> None:
    srv = Server(routes(
        tcelery_routes("/seed/(\\w+)", get_tasks=[w.echo], handler=SeedStyleHandler,
                       producer=producer),
        tcelery_routes("/mixin/(\\w+)", post_tasks=[w.echo, w.echo], handler=ManyMixin,
                       producer=producer)))
    try:
        body = body_of(await srv.fetch("/seed/x?q=1"))
        assert body["wrapped"] == {"args": ["x"], "kwargs": {"_query": {"q": ["1"]},
                                                             "_body": {}}}
        assert body["status"] == "SUCCESS" and body["task_id"]
        body = body_of(await srv.fetch("/mixin/y", "POST"))
        assert body == {"many": [{"args": ["y"], "kwargs": {"tag": "m"}}] * 2, "fired": 2,
                        "uri_path": "/mixin/(\\w+)", "n_post": 2}
    finally:
        srv.close()


def test_route_classes_carry_the_original_class_members() -> None:
    (rule,) = tcelery_routes("/u/(\\d+)", get_tasks=[w.add], delete_tasks=["x.y"],
                             name="user", queue="q1", timeout=5)
    handler = rule.target
    assert issubclass(handler, TCeleryReqHandler)
    assert handler.uri_path == "/u/(\\d+)" and rule.name == "user"
    assert [t.name for t in handler.get_tasks] == ["tests.worker_app.add"]
    assert [t.name for t in handler.delete_tasks] == ["x.y"]
    assert handler.post_tasks == () and handler.put_tasks == ()
    assert handler.timeout == 5.0 and dict(handler.task_options) == {"queue": "q1"}


@pytest.mark.parametrize(("call", "message"), [
    (lambda: tcelery_routes("", get_tasks=[w.add]), "uri_path"),
    (lambda: tcelery_routes(None, get_tasks=[w.add]), "uri_path"),
    (lambda: tcelery_routes("/x", get_tasks=w.add), "must be a list"),
    (lambda: tcelery_routes("/x", get_tasks="tests.worker_app.add"), "must be a list"),
    (lambda: tcelery_routes("/x", get_tasks=[42]), "neither a Celery task"),
    (lambda: tcelery_routes("/x", get_tasks=[""]), "neither a Celery task"),
    (lambda: tcelery_routes("/x", get_tasks=[w.add], timeout=0), "timeout"),
    (lambda: tcelery_routes("/x", get_tasks=[w.add], handler=RequestHandler), "must subclass"),
    (lambda: tcelery_routes("/x", get_tasks=[w.add], handler="nope"), "must be a class"),
    (lambda: routes("/x"), "URL rules"),
    (lambda: tcelery_routes("/x", get_tasks=[w.add], error_statuses={"E": 200}), "4xx/5xx"),
])
def test_misuse_fails_when_the_route_is_built(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        call()


def test_unknown_route_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="'qeue'"):
        tcelery_async_routes("/x", get_tasks=[w.add], qeue="typo")
    with pytest.raises(TypeError, match="'bogus'"):
        tcelery_routes("/x", get_tasks=[w.add.s().set(bogus=1)])
