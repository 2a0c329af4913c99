"""Route factories: map a URL and its HTTP verbs to Celery tasks.

``tcelery_routes`` builds routes whose handler waits for the results;
``tcelery_async_routes`` builds fire-and-forget routes. Both return a list of Tornado URL
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

from .errors import ConfigurationError
from .handlers import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_TIMEOUT,
    TaskSpec,
    TCeleryAsyncHandler,
    TCeleryBaseHandler,
    TCeleryReqHandler,
)
from .messages import check_options
from .producer import Producer


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


def _handler_class(base: type[TCeleryBaseHandler], handler: Any, uri_path: str,
                   members: dict[str, Any]) -> type[TCeleryBaseHandler]:
    if handler is None:
        bases: tuple[type, ...] = (base,)
    elif not isinstance(handler, type):
        raise ConfigurationError(f"handler must be a class, not {handler!r}")
    elif issubclass(handler, TCeleryBaseHandler):
        bases = (handler,)
    elif issubclass(handler, RequestHandler):
        raise ConfigurationError(f"handler {handler.__name__} must subclass "
                                 f"{base.__name__} or be a mixin, not a plain RequestHandler")
    else:
        bases = (handler, base)  # a mixin
    slug = re.sub(r"\W+", "_", uri_path).strip("_") or "root"
    return type(f"{bases[0].__name__}_{slug}", bases, members)


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
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, not "
                                 f"{timeout!r}")
    if isinstance(max_body_size, bool) or not isinstance(max_body_size, int) \
            or max_body_size < 0:
        raise ConfigurationError(f"max_body_size must be a number of bytes, not "
                                 f"{max_body_size!r}")
    if producer is not None and not isinstance(producer, Producer):
        raise ConfigurationError(f"producer must be a Producer, not {producer!r}")
    members: dict[str, Any] = {
        "uri_path": uri_path, "timeout": float(timeout), "max_body_size": max_body_size,
        "task_options": options, "producer": producer, "error_statuses": error_statuses,
        **{f"{verb}_tasks": _task_specs(verb, verb_tasks) for verb, verb_tasks in tasks.items()},
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
