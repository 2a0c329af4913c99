"""Route factories: map a URL and its HTTP verbs to Celery tasks, or to task states.

``tcelery_routes`` builds routes whose handler waits for the results;
``tcelery_async_routes`` builds fire-and-forget routes; ``tcelery_status_routes`` builds the
status, event-stream and revoke routes for any task id; ``tcelery_group_routes`` the routes
of batches sent as one group. Each returns a list of Tornado URL
rules; ``routes`` flattens several such lists into one for ``tornado.web.Application``.
Every misuse is refused here, when the route is built, not at the first request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from celery.app.task import Task
from celery.canvas import Signature
from tornado.routing import Rule, URLSpec
from tornado.web import RequestHandler

from ..backends import CACHE_SCHEMES, backend_scheme
from ..cache import ResultCache
from ..errors import ConfigurationError
from ..messages import check_options
from ..producer import Producer
from .base import DEFAULT_TIMEOUT
from .events import DEFAULT_STREAM_TIMEOUT
from .groups import (
    DEFAULT_MAX_GROUP_SIZE,
    GroupEventsHandler,
    GroupStatusHandler,
    GroupSubmitHandler,
)
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


def _check_cors(value: Any) -> frozenset[str] | None:
    """``cors=``: None, ``"*"``, one origin or a list of them (``https://host[:port]``)."""
    if value is None:
        return None
    origins = [value] if isinstance(value, str) else value
    if not isinstance(origins, (list, tuple, set, frozenset)) or not origins or not all(
            isinstance(o, str) and (o == "*" or "://" in o) for o in origins):
        raise ConfigurationError(f"cors must be '*', an origin such as "
                                 f"'https://app.example.com', or a list of them, not {value!r}")
    return frozenset(o.rstrip("/") for o in origins)


def _check_producer(producer: Any) -> Producer | None:
    if producer is not None and not isinstance(producer, Producer):
        raise ConfigurationError(f"producer must be a Producer, not {producer!r}")
    return producer


def _apps(specs: Iterable[TaskSpec], producer: Producer | None) -> list[Any]:
    """The Celery apps a route's tasks will be sent with, as far as can be known now."""
    if producer is not None:
        return [producer.app]
    apps = [spec.task.app for spec in specs if getattr(spec.task, "app", None) is not None]
    if not apps:
        from celery import current_app

        apps = [current_app._get_current_object()]
    return apps


def _require_backend(what: str, specs: Iterable[TaskSpec], producer: Producer | None, *,
                     schemes: frozenset[str] | None = None, refused: str = "") -> None:
    """Refuse, when the route is built, a route that could never answer: one whose app has
    no result backend, or (``schemes``) not one of those it needs."""
    for app in _apps(specs, producer):
        scheme = backend_scheme(app)
        if not scheme:
            raise ConfigurationError(
                f"{what} needs a result backend, and app {app.main!r} has none: set "
                "result_backend, or use tcelery_async_routes")
        if schemes is not None and scheme not in schemes:
            raise ConfigurationError(f"{what} cannot use result backend {scheme}://: {refused}")


#: What to use instead of rpc:// for groups: every persistent backend keeps them.
_GROUP_BACKENDS = "use redis://, rediss:// or a database backend (db+..., django-db)"


def _common_options(base: type[TCeleryBaseHandler], uri_path: str,
                    specs: Mapping[str, tuple[TaskSpec, ...]], options: dict[str, Any]
                    ) -> tuple[str | None, dict[str, Any]]:
    """Check the options every task route takes; ``(name, class members)``. What is left
    in ``options`` is ``apply_async`` options."""
    if not isinstance(uri_path, str) or not uri_path.strip():
        raise ConfigurationError(f"uri_path must be a non-empty string, not {uri_path!r}")
    name = options.pop("name", None)
    timeout = _check_timeout("timeout", options.pop("timeout", DEFAULT_TIMEOUT))
    max_body_size = options.pop("max_body_size", DEFAULT_MAX_BODY_SIZE)
    producer = _check_producer(options.pop("producer", None))
    error_statuses = dict(options.pop("error_statuses", None) or {})
    cache = options.pop("cache", None)
    cors = _check_cors(options.pop("cors", None))
    revoke_on_timeout = options.pop("revoke_on_timeout", False)
    if not isinstance(revoke_on_timeout, bool):
        raise ConfigurationError(f"revoke_on_timeout must be True or False, not "
                                 f"{revoke_on_timeout!r}")
    if revoke_on_timeout and base is TCeleryAsyncHandler:
        raise ConfigurationError("revoke_on_timeout applies to routes that wait for results")
    check_options(options)
    for exc_type, status in error_statuses.items():
        if not isinstance(exc_type, str) or not isinstance(status, int) \
                or not 400 <= status <= 599:
            raise ConfigurationError(f"error_statuses maps exception type names to 4xx/5xx "
                                     f"statuses, not {exc_type!r}: {status!r}")
    if isinstance(max_body_size, bool) or not isinstance(max_body_size, int) \
            or max_body_size < 0:
        raise ConfigurationError(f"max_body_size must be a number of bytes, not "
                                 f"{max_body_size!r}")
    all_specs = [spec for verb_specs in specs.values() for spec in verb_specs]
    if base is not TCeleryAsyncHandler:
        _require_backend("a waiting route", all_specs, producer)
    if cache is not None:
        if base is TCeleryAsyncHandler:
            raise ConfigurationError("cache= applies to routes that wait for results, not to "
                                     "fire-and-forget routes")
        cache = ResultCache(_check_timeout("cache", cache))
        _require_backend("cache=", all_specs, producer, schemes=CACHE_SCHEMES,
                         refused="the cache is kept in Redis: use redis:// or rediss:// (or "
                                 "the embedded mode)")
    return name, {
        "uri_path": uri_path, "timeout": timeout, "max_body_size": max_body_size,
        "task_options": options, "producer": producer, "error_statuses": error_statuses,
        "cache": cache, "cors_origins": cors, "revoke_on_timeout": revoke_on_timeout,
        **{f"{verb}_tasks": verb_specs for verb, verb_specs in specs.items()},
    }


def _build(base: type[TCeleryBaseHandler], uri_path: str, tasks: dict[str, Any],
           handler: Any, options: dict[str, Any]) -> list[URLSpec]:
    specs = {verb: _task_specs(verb, verb_tasks) for verb, verb_tasks in tasks.items()}
    name, members = _common_options(base, uri_path, specs, options)
    return [URLSpec(uri_path, _handler_class(base, handler, uri_path, members), name=name)]


def tcelery_routes(uri_path: str, get_tasks: Any = (), post_tasks: Any = (),
                   put_tasks: Any = (), delete_tasks: Any = (), handler: Any = None,
                   **options: Any) -> list[URLSpec]:
    """Routes whose handler waits for the tasks' results.

    Task lists hold Celery tasks, registered task names or signatures. Options: ``timeout``
    (seconds to wait, default 30), ``name`` (for ``reverse_url``), ``max_body_size`` (bytes,
    default 1 MiB), ``producer`` (default: the one from ``setup_nonblocking_producer``),
    ``error_statuses`` (e.g. ``{"UserNotFound": 404}``: the status for a task that raised that
    exception type, instead of 500), ``cache`` (seconds a SUCCESS is served again for the same
    input), ``revoke_on_timeout`` (a task that has not finished at the timeout is not left to
    run: sent with ``expires``, revoked on the 504), ``cors`` (origins allowed to call the
    route from a browser), and any ``apply_async`` option (``queue``, ``priority``,
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
    longest event stream, default 3600 s), ``producer``, ``cors``, ``name`` (the route
    name; fire-and-forget routes point at the status routes named ``tcelery.task_status``,
    the default: give a second mount another name). ``handler`` is a mixin (or a
    RequestHandler subclass, e.g. the app's login base) put before both handlers.
    """
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ConfigurationError(f"prefix must be a path starting with '/', not {prefix!r}")
    timeout = _check_timeout("timeout", options.pop("timeout", DEFAULT_TIMEOUT))
    stream_timeout = _check_timeout("stream_timeout",
                                    options.pop("stream_timeout", DEFAULT_STREAM_TIMEOUT))
    producer = _check_producer(options.pop("producer", None))
    cors = _check_cors(options.pop("cors", None))
    name = options.pop("name", TASK_STATUS_ROUTE)
    if options:
        raise TypeError(f"unsupported status route option {sorted(options)[0]!r}")
    if producer is not None:
        producer.require_results("status routes")
    base = prefix.rstrip("/")
    members = {"producer": producer, "timeout": timeout, "stream_timeout": stream_timeout,
               "cors_origins": cors}
    return [
        URLSpec(rf"{base}/([^/]+)/events",
                _handler_class(TaskEventsHandler, handler, f"{base}/events", dict(members),
                               any_request_handler=True)),
        URLSpec(rf"{base}/([^/]+)",
                _handler_class(TaskStatusHandler, handler, base, dict(members),
                               any_request_handler=True),
                name=name),
    ]


def tcelery_group_routes(uri_path: str, task: Any, handler: Any = None,
                         **options: Any) -> list[URLSpec]:
    """Routes for batches sent as one Celery group: ``POST uri_path`` (``{"tasks": [...]}``),
    ``GET uri_path/<group_id>`` (``?wait=S``), ``GET uri_path/<group_id>/events`` (SSE) and
    ``DELETE uri_path/<group_id>`` (revoke the members that are not ready).

    ``task`` is a Celery task, a task name or a signature. Options: those of
    :func:`tcelery_routes` (``cache=`` included), ``max_group_size`` (default 1,000) and
    ``stream_timeout``. Needs a result backend that keeps groups (not rpc://). ``handler``
    is a mixin put before the submit, status and events handlers.
    """
    stream_timeout = _check_timeout("stream_timeout",
                                    options.pop("stream_timeout", DEFAULT_STREAM_TIMEOUT))
    max_group_size = options.pop("max_group_size", DEFAULT_MAX_GROUP_SIZE)
    if isinstance(max_group_size, bool) or not isinstance(max_group_size, int) \
            or max_group_size < 1:
        raise ConfigurationError(f"max_group_size must be a positive number of tasks, not "
                                 f"{max_group_size!r}")
    specs = {"post": (_task_spec("task", task),)}
    name, members = _common_options(GroupSubmitHandler, uri_path, specs, options)
    for app in _apps(specs["post"], members["producer"]):
        if backend_scheme(app) == "rpc":
            raise ConfigurationError(f"group routes need a result backend that keeps groups, "
                                     f"and rpc:// keeps nothing: {_GROUP_BACKENDS}")
    base = uri_path.rstrip("/")
    group_route = name or f"tcelery.group {base}"
    status_members = {"producer": members["producer"], "timeout": members["timeout"],
                      "stream_timeout": stream_timeout, "cors_origins": members["cors_origins"]}
    submit = _handler_class(GroupSubmitHandler, handler, base, {
        **members, "max_group_size": max_group_size, "group_route": group_route},
        any_request_handler=True)
    return [
        URLSpec(rf"{base}/?", submit),
        URLSpec(rf"{base}/([^/]+)/events",
                _handler_class(GroupEventsHandler, handler, f"{base}/events",
                               dict(status_members), any_request_handler=True)),
        URLSpec(rf"{base}/([^/]+)",
                _handler_class(GroupStatusHandler, handler, base, dict(status_members),
                               any_request_handler=True),
                name=group_route),
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


def tcelery_metrics_routes(path: str = "/metrics", registry: Any = None) -> list[URLSpec]:
    """The Prometheus exposition route, OpenMetrics or text as the scraper's ``Accept`` asks.

    Turns the ``tcelery_*`` metrics on (registered in ``registry``, default
    ``prometheus_client.REGISTRY``) and serves ``registry``; with ``PROMETHEUS_MULTIPROC_DIR``
    set, every scrape reads all the processes' files instead. ConfigurationError without
    prometheus_client (``pip install 'tcelery-req-handler[metrics]'``).
    """
    from .. import metrics
    from .ops import MetricsHandler

    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigurationError(f"the metrics path must start with '/', not {path!r}")
    metrics.enable(registry)
    handler = type("TCeleryMetricsHandler", (MetricsHandler,), {"registry": registry})
    return [URLSpec(re.escape(path), handler, name="tcelery.metrics")]


def tcelery_health_routes(healthz: str = "/healthz", readyz: str = "/readyz",
                          producer: Any = None) -> list[URLSpec]:
    """Liveness (``healthz``: 200 while the process serves) and readiness (``readyz``: 200
    when ``producer``, default the installed one, reaches its broker and result backend,
    else 503 naming the failing checks)."""
    from .ops import HealthHandler, ReadyHandler

    for value in (healthz, readyz):
        if not isinstance(value, str) or not value.startswith("/"):
            raise ConfigurationError(f"health paths must start with '/', not {value!r}")
    ready = type("TCeleryReadyHandler", (ReadyHandler,),
                 {"producer": _check_producer(producer)})
    return [URLSpec(re.escape(healthz), HealthHandler, name="tcelery.healthz"),
            URLSpec(re.escape(readyz), ready, name="tcelery.readyz")]
