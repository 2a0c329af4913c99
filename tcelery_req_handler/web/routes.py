"""Route factories: map a URL and its HTTP verbs to Celery tasks, or to task states.

``tcelery_routes`` builds routes whose handler waits for the results;
``tcelery_async_routes`` builds fire-and-forget routes; ``tcelery_status_routes`` builds the
status, event-stream and revoke routes for any task id. Each returns a list of Tornado URL
rules; ``routes`` flattens several such lists into one for ``tornado.web.Application``.
Every misuse is refused here, when the route is built, not at the first request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from celery.app.task import Task
from celery.canvas import Signature
from tornado.routing import Rule, URLSpec
from tornado.web import RequestHandler

from ..backends import backend_scheme
from ..errors import ConfigurationError
from ..messages import check_options
from ..producer import Producer
from .base import DEFAULT_TIMEOUT
from .events import DEFAULT_STREAM_TIMEOUT
from .handlers import (
    DEFAULT_MAX_BODY_SIZE,
    TaskSpec,
    TCeleryAsyncHandler,
    TCeleryBaseHandler,
    TCeleryReqHandler,
)
from .status import TASK_STATUS_ROUTE, TaskEventsHandler, TaskStatusHandler


def _task_spec(verb: str, item: Any) -> TaskSpec:
    if isinstance(item, Signature):  # before str/dict checks: a Signature is a dict
        if not item.task:
            raise ConfigurationError(f"{verb}_tasks: signature {item!r} names no task")
        options = dict(item.options)
        check_options(options)
        return TaskSpec(item.task, None, tuple(item.args), dict(item.kwargs), options)
    if isinstance(item, Task):
        return TaskSpec(item.name, item)
    if isinstance(item, str) and item.strip():
        return TaskSpec(item.strip())
    raise ConfigurationError(f"{verb}_tasks: {item!r} is neither a Celery task, a task name "
                             "nor a signature")


def _task_specs(verb: str, tasks: Any) -> tuple[TaskSpec, ...]:
    if isinstance(tasks, (str, bytes, Signature, Task)) or not isinstance(tasks, (list, tuple)):
        raise ConfigurationError(f"{verb}_tasks must be a list of tasks, task names or "
                                 f"signatures, not {type(tasks).__name__}")
    return tuple(_task_spec(verb, item) for item in tasks)


def _handler_class(base: type[RequestHandler], handler: Any, uri_path: str,
                   members: dict[str, Any], *, any_request_handler: bool = False
                   ) -> type[Any]:
    """``base`` with the route's members, and ``handler`` (a subclass of ``base``, or a
    mixin placed before it; any RequestHandler subclass too where ``any_request_handler``)."""
    if handler is None:
        bases: tuple[type, ...] = (base,)
    elif not isinstance(handler, type):
        raise ConfigurationError(f"handler must be a class, not {handler!r}")
    elif issubclass(handler, base):
        bases = (handler,)
    elif issubclass(handler, RequestHandler) and not any_request_handler:
        raise ConfigurationError(f"handler {handler.__name__} must subclass "
                                 f"{base.__name__} or be a mixin, not a plain RequestHandler")
    else:
        bases = (handler, base)  # a mixin, or (status routes) e.g. an app's login base
    slug = re.sub(r"\W+", "_", uri_path).strip("_") or "root"
    return type(f"{bases[0].__name__}_{slug}", bases, members)


def _check_timeout(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or value != value:
        raise ConfigurationError(f"{name} must be a positive number of seconds, not "
                                 f"{value!r}")
    return float(value)


def _check_producer(producer: Any) -> Producer | None:
    if producer is not None and not isinstance(producer, Producer):
        raise ConfigurationError(f"producer must be a Producer, not {producer!r}")
    return producer


def _check_results(base: type[TCeleryBaseHandler], specs: dict[str, tuple[TaskSpec, ...]],
                   producer: Producer | None) -> None:
    """A waiting route whose tasks' app keeps no results could never answer: refuse it."""
    if base is not TCeleryReqHandler:
        return
    if producer is not None:
        producer.require_results("a waiting route")
    for spec in (spec for verb_specs in specs.values() for spec in verb_specs):
        app = getattr(spec.task, "app", None)
        if app is not None and not backend_scheme(app):
            raise ConfigurationError(
                f"a waiting route needs a result backend, and task {spec.name!r}'s app has "
                "none: set result_backend, or use tcelery_async_routes")


def _build(base: type[TCeleryBaseHandler], uri_path: str, tasks: dict[str, Any],
           handler: Any, options: dict[str, Any]) -> list[URLSpec]:
    if not isinstance(uri_path, str) or not uri_path.strip():
        raise ConfigurationError(f"uri_path must be a non-empty string, not {uri_path!r}")
    name = options.pop("name", None)
    timeout = options.pop("timeout", DEFAULT_TIMEOUT)
    max_body_size = options.pop("max_body_size", DEFAULT_MAX_BODY_SIZE)
    producer = options.pop("producer", None)
    error_statuses = dict(options.pop("error_statuses", None) or {})
    check_options(options)
    for exc_type, status in error_statuses.items():
        if not isinstance(exc_type, str) or not isinstance(status, int) \
                or not 400 <= status <= 599:
            raise ConfigurationError(f"error_statuses maps exception type names to 4xx/5xx "
                                     f"statuses, not {exc_type!r}: {status!r}")
    timeout = _check_timeout("timeout", timeout)
    if isinstance(max_body_size, bool) or not isinstance(max_body_size, int) \
            or max_body_size < 0:
        raise ConfigurationError(f"max_body_size must be a number of bytes, not "
                                 f"{max_body_size!r}")
    producer = _check_producer(producer)
    specs = {verb: _task_specs(verb, verb_tasks) for verb, verb_tasks in tasks.items()}
    _check_results(base, specs, producer)
    members: dict[str, Any] = {
        "uri_path": uri_path, "timeout": timeout, "max_body_size": max_body_size,
        "task_options": options, "producer": producer, "error_statuses": error_statuses,
        **{f"{verb}_tasks": verb_specs for verb, verb_specs in specs.items()},
    }
    return [URLSpec(uri_path, _handler_class(base, handler, uri_path, members), name=name)]


def tcelery_routes(uri_path: str, get_tasks: Any = (), post_tasks: Any = (),
                   put_tasks: Any = (), delete_tasks: Any = (), handler: Any = None,
                   **options: Any) -> list[URLSpec]:
    """Routes whose handler waits for the tasks' results.

    Task lists hold Celery tasks, registered task names or signatures. Options: ``timeout``
    (seconds to wait, default 30), ``name`` (for ``reverse_url``), ``max_body_size`` (bytes,
    default 1 MiB), ``producer`` (default: the one from ``setup_nonblocking_producer``),
    ``error_statuses`` (e.g. ``{"UserNotFound": 404}``: the status for a task that raised that
    exception type, instead of 500), and any ``apply_async`` option (``queue``, ``priority``,
    ``expires``, ``countdown``, ...).
    """
    tasks = {"get": get_tasks, "post": post_tasks, "put": put_tasks, "delete": delete_tasks}
    return _build(TCeleryReqHandler, uri_path, tasks, handler, dict(options))


def tcelery_async_routes(uri_path: str, get_tasks: Any = (), post_tasks: Any = (),
                         put_tasks: Any = (), delete_tasks: Any = (), handler: Any = None,
                         **options: Any) -> list[URLSpec]:
    """Fire-and-forget routes: 202 with the task ids once the broker confirmed each one.
    Same arguments as :func:`tcelery_routes`."""
    tasks = {"get": get_tasks, "post": post_tasks, "put": put_tasks, "delete": delete_tasks}
    return _build(TCeleryAsyncHandler, uri_path, tasks, handler, dict(options))


def tcelery_status_routes(prefix: str = "/tasks", handler: Any = None,
                          **options: Any) -> list[URLSpec]:
    """Status routes for any task id: ``GET {prefix}/<id>`` (``?wait=S``), ``GET
    {prefix}/<id>/events`` (Server-Sent Events) and ``DELETE {prefix}/<id>`` (revoke).

    Options: ``timeout`` (the longest ``?wait``, default 30 s), ``stream_timeout`` (the
    longest event stream, default 3600 s), ``producer``. ``handler`` is a mixin (or a
    RequestHandler subclass, e.g. the app's login base) put before both handlers.
    """
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ConfigurationError(f"prefix must be a path starting with '/', not {prefix!r}")
    timeout = _check_timeout("timeout", options.pop("timeout", DEFAULT_TIMEOUT))
    stream_timeout = _check_timeout("stream_timeout",
                                    options.pop("stream_timeout", DEFAULT_STREAM_TIMEOUT))
    producer = _check_producer(options.pop("producer", None))
    if options:
        raise TypeError(f"unsupported status route option {sorted(options)[0]!r}")
    if producer is not None:
        producer.require_results("status routes")
    base = prefix.rstrip("/")
    members = {"producer": producer, "timeout": timeout, "stream_timeout": stream_timeout}
    return [
        URLSpec(rf"{base}/([^/]+)/events",
                _handler_class(TaskEventsHandler, handler, f"{base}/events", dict(members),
                               any_request_handler=True)),
        URLSpec(rf"{base}/([^/]+)",
                _handler_class(TaskStatusHandler, handler, base, dict(members),
                               any_request_handler=True),
                name=TASK_STATUS_ROUTE),
    ]


def routes(*rules: Any) -> list[Any]:
    """Flatten rules and lists of rules (from the factories or plain Tornado tuples)."""
    flat: list[Any] = []

    def add(items: Iterable[Any]) -> None:
        for item in items:
            if isinstance(item, list):
                add(item)
            elif isinstance(item, (tuple, Rule)):
                flat.append(item)
            else:
                raise ConfigurationError(f"routes() takes URL rules or lists of them, "
                                         f"not {item!r}")

    add(rules)
    return flat
