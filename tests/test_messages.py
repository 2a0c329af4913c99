"""Unit tests of the pure part: message building, routing and option validation (no I/O)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery
from kombu import Exchange, Queue

from tcelery_req_handler.errors import ConfigurationError
from tcelery_req_handler.messages import build_message, check_options, queue_declaration


@pytest.fixture
def app() -> Celery:
    app = Celery("unit", broker="amqp://", backend="rpc://", set_as_current=False)
    app.conf.task_default_queue = "unit.default"

    @app.task(name="unit.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def test_protocol_2_message_round_trips_args_and_kwargs(app: Celery) -> None:
    msg = build_message(app, "unit.add", (1, 2), {"k": "v"}, {}, "reply.q")
    assert msg.headers["task"] == "unit.add"
    assert msg.headers["id"] == msg.task_id
    assert msg.headers["lang"] == "py"
    assert msg.properties["correlation_id"] == msg.task_id
    assert msg.properties["reply_to"] == "reply.q"
    assert msg.properties["content_type"] == "application/json"
    args, kwargs, embed = json.loads(msg.body)
    assert (args, kwargs) == ([1, 2], {"k": "v"})
    assert set(embed) == {"callbacks", "errbacks", "chain", "chord"}


def test_default_queue_goes_through_the_default_exchange(app: Celery) -> None:
    msg = build_message(app, "unit.add", (1, 2), None, {}, "")
    assert (msg.exchange, msg.routing_key) == ("", "unit.default")
    assert msg.declare is not None and msg.declare.name == "unit.default"
    assert msg.properties["delivery_mode"] == 2  # task_default_delivery_mode: persistent


def test_per_call_queue_and_task_routes() -> None:
    app = Celery("routed", broker="amqp://", set_as_current=False)
    app.conf.task_routes = {"unit.add": {"queue": "routed"}}
    assert build_message(app, "unit.add", (), None, {}, "").routing_key == "routed"
    assert build_message(app, "unit.add", (), None, {"queue": "q2"}, "").routing_key == "q2"


def test_explicit_topic_exchange_and_routing_key(app: Celery) -> None:
    opts = {"exchange": Exchange("ex", type="topic"), "routing_key": "a.b"}
    msg = build_message(app, "unit.add", (), None, opts, "")
    assert (msg.exchange, msg.routing_key) == ("ex", "a.b")


def test_countdown_eta_expires_priority_limits_and_headers(app: Celery) -> None:
    msg = build_message(app, "unit.add", (), None, {
        "countdown": 10, "expires": 60, "priority": 7, "time_limit": 5,
        "soft_time_limit": 3, "headers": {"x-trace": "t1"}, "task_id": "fixed-id",
        "ignore_result": True}, "")
    assert msg.task_id == "fixed-id"
    eta = datetime.fromisoformat(msg.headers["eta"])
    assert timedelta(seconds=8) < eta - datetime.now(timezone.utc) <= timedelta(seconds=10)
    assert msg.headers["expires"] is not None
    assert 59_000 <= int(msg.properties["expiration"]) <= 60_000
    assert msg.properties["priority"] == 7
    assert msg.headers["timelimit"] == [5, 3]
    assert msg.headers["x-trace"] == "t1"
    assert msg.headers["ignore_result"] is True


def test_link_and_link_error_travel_in_the_body(app: Celery) -> None:
    callback = app.signature("unit.add", (1,))
    msg = build_message(app, "unit.add", (1, 2), None,
                        {"link": callback, "link_error": [callback]}, "")
    _, _, embed = json.loads(msg.body)
    assert embed["callbacks"][0]["task"] == "unit.add"
    assert embed["errbacks"][0]["args"] == [1]


def test_transient_delivery_mode(app: Celery) -> None:
    msg = build_message(app, "unit.add", (), None, {"delivery_mode": "transient"}, "")
    assert msg.properties["delivery_mode"] == 1
    with pytest.raises(ConfigurationError):
        build_message(app, "unit.add", (), None, {"delivery_mode": 7}, "")


def test_registered_task_options_apply_first(app: Celery) -> None:
    @app.task(name="unit.own_queue", queue="own.q")
    def own_queue() -> None: ...

    task = app.tasks["unit.own_queue"]
    assert build_message(app, task.name, (), None, {}, "", task).routing_key == "own.q"
    assert build_message(app, task.name, (), None, {"queue": "q9"}, "", task).routing_key == "q9"


def test_unknown_and_refused_options_raise_type_error() -> None:
    check_options({"countdown": 1, "queue": "q"})
    with pytest.raises(TypeError, match="'bogus'"):
        check_options({"bogus": 1})
    with pytest.raises(TypeError, match="retry"):
        check_options({"retry": True})


def test_queue_declaration_matches_the_worker(app: Celery) -> None:
    decl = queue_declaration(app.amqp.queues["fresh.q"])
    assert (decl.name, decl.durable, decl.exclusive, decl.auto_delete) == \
        ("fresh.q", True, False, False)
    assert decl.exchanges == (("fresh.q", "direct", True, False, {}),)
    assert decl.bindings == (("fresh.q", "fresh.q", {}),)
    prio = queue_declaration(Queue("p", Exchange("p"), "p", max_priority=10, expires=30))
    assert prio.arguments == {"x-max-priority": 10, "x-expires": 30000}
