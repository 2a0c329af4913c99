"""Tornado handlers: ``TCeleryReqHandler`` waits for results, ``TCeleryAsyncHandler`` fires
and forgets; both reach the route's tasks through ``self.task_handler``.

Every response is JSON, errors included (``{"error": {...}}``); the status of each outcome is
decided in one place, :func:`tcelery_req_handler.responses.error_response`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tornado import httputil
from tornado.web import HTTPError, stream_request_body

from ..cache import ResultCache
from ..errors import RequestError, TaskFailed, TaskTimeout, TCeleryError
from ..producer import Producer, get_producer
from ..results import TaskResult
from .arguments import parse_form_body, request_arguments
from .base import DEFAULT_TIMEOUT, JSONErrorsMixin
from .responses import error_response
from .status import status_url

log = logging.getLogger(__name__)

VERBS = ("get", "post", "put", "delete")
# The argument a TypeError names: an unexpected one is any string (``''``, ``"a'b"``), so
# it is read up to the closing quote at the end; a missing one is an identifier.
_ARGUMENT = re.compile(r"(?:unexpected keyword|multiple values for) argument '(.*)'$"
                       r"|arguments?:? '([^']+)'")
_OVERRIDES: dict[tuple[type, str], bool] = {}


def _overrides(cls: type, method: str) -> bool:
    """True when ``cls`` (a user's handler) defines its own ``method`` (once per class)."""
    key = (cls, method)
    found = _OVERRIDES.get(key)
    if found is None:
        found = _OVERRIDES[key] = getattr(cls, method, None) is not getattr(
            TCeleryBaseHandler, method, None)
    return found
DEFAULT_MAX_BODY_SIZE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One entry of a route's task list: what to send, with its fixed arguments and options."""

    name: str
    task: Any = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


class TaskHandler:
    """``self.task_handler``: runs the route's tasks for a verb.

    For each verb X: ``X_one(index, ...)`` awaits one task and returns its finished
    ``TaskResult`` (also when it failed: check ``.status``); ``X_many(...)`` runs all the
    verb's tasks concurrently; ``X_async(...)`` publishes them and returns their task ids
    once the broker has confirmed each one.
    """

    def __init__(self, handler: TCeleryBaseHandler) -> None:
        self.handler = handler

    def tasks(self, verb: str) -> tuple[TaskSpec, ...]:
        specs: tuple[TaskSpec, ...] = getattr(self.handler, f"{verb}_tasks")
        return specs

    @staticmethod
    def task_kwargs(spec: TaskSpec, kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
        """The spec's fixed kwargs plus the request's; a 400 if the request sets a fixed one."""
        if not spec.kwargs:
            return kwargs
        fixed = [name for name in kwargs if name in spec.kwargs]
        if fixed:
            raise RequestError(400, f"argument {fixed[0]!r} is fixed by the route",
                               argument=fixed[0])
        return {**spec.kwargs, **kwargs}

    def check(self, specs: Sequence[TaskSpec], args: Sequence[Any],
              kwargs: Mapping[str, Any]) -> None:
        """Refuse a request that one of several tasks would refuse, before any is sent."""
        for spec in specs:
            self.check_signature(spec, (*spec.args, *args), self.task_kwargs(spec, kwargs))

    def check_signature(self, spec: TaskSpec, args: Sequence[Any],
                        kwargs: Mapping[str, Any]) -> None:
        """A 400 naming the argument when the task (known in this process) cannot take these
        arguments: a missing one, or one it has no parameter for. Nothing is sent."""
        task = spec.task or _registry(self.handler.the_producer().app).get(spec.name)
        header = getattr(task, "__header__", None) if getattr(task, "typing", True) else None
        if header is None:
            return
        try:
            header(*args, **kwargs)
        except TypeError as exc:
            named = _ARGUMENT.search(str(exc))
            raise RequestError(400, f"task {spec.name} cannot take these arguments: "
                                    f"{_without_function(str(exc))}",
                               **({"argument": next(g for g in named.groups() if g is not None)}
                                  if named else {})) from None

    def options(self, spec: TaskSpec) -> Mapping[str, Any]:
        """The ``apply_async`` options of one task: the route's, then the spec's."""
        task_options = self.handler.task_options
        return {**task_options, **spec.options} if spec.options else task_options

    async def send(self, spec: TaskSpec, args: Sequence[Any], kwargs: Mapping[str, Any],
                   *, reply: bool) -> TaskResult:
        """Publish one task: the spec's partial args first, its fixed kwargs protected."""
        handler = self.handler
        kwargs = self.task_kwargs(spec, kwargs)
        full_args = (*spec.args, *args)
        self.check_signature(spec, full_args, kwargs)
        options = self.options(spec)
        if reply and handler.revoke_on_timeout and "expires" not in options:
            options = {**options, "expires": handler.timeout}
        return await handler.the_producer().apply_async(
            spec.task or spec.name, full_args, kwargs, reply=reply,
            record=handler.status_url is not None, **options)

    async def wait(self, result: TaskResult) -> None:
        """Wait for a ready state within the route's timeout; with ``revoke_on_timeout``, a
        task still running at the timeout is revoked (and terminated) before the 504."""
        try:
            await result.get(timeout=self.handler.timeout, propagate=False)
        except TaskTimeout:
            if self.handler.revoke_on_timeout:
                with contextlib.suppress(TCeleryError):
                    await self.handler.the_producer().revoke(result.task_id, terminate=True)
            raise

    async def one(self, verb: str, index: int, /, *args: Any, **kwargs: Any) -> TaskResult:
        spec = self.tasks(verb)[index]
        cache = self.handler.cache
        if cache is None:
            result = await self.send(spec, args, kwargs, reply=True)
            await self.wait(result)
            return result
        source = self.handler.the_producer().require_results("cache=")
        full_args, full_kwargs = (*spec.args, *args), self.task_kwargs(spec, kwargs)
        hit, value = await cache.get(source, spec.name, full_args, full_kwargs)
        self.handler.cache_outcome("hit" if hit else "miss")
        if hit:
            return TaskResult.known(value)
        result = await self.send(spec, args, kwargs, reply=True)
        await self.wait(result)
        if result.successful():
            await cache.put(source, spec.name, full_args, full_kwargs, result.result)
        return result

    async def many(self, verb: str, /, *args: Any, **kwargs: Any) -> list[TaskResult]:
        specs = self.tasks(verb)
        if len(specs) == 1:
            return [await self.one(verb, 0, *args, **kwargs)]
        self.check(specs, args, kwargs)
        return await _gather([self.one(verb, i, *args, **kwargs) for i in range(len(specs))])

    async def fire(self, verb: str, /, *args: Any, **kwargs: Any) -> list[str]:
        specs = self.tasks(verb)
        if len(specs) == 1:
            return [(await self.send(specs[0], args, kwargs, reply=False)).task_id]
        self.check(specs, args, kwargs)
        sent = await _gather([self.send(spec, args, kwargs, reply=False) for spec in specs])
        return [result.task_id for result in sent]

    async def get_one(self, index: int, /, *args: Any, **kwargs: Any) -> TaskResult:
        return await self.one("get", index, *args, **kwargs)

    async def post_one(self, index: int, /, *args: Any, **kwargs: Any) -> TaskResult:
        return await self.one("post", index, *args, **kwargs)

    async def put_one(self, index: int, /, *args: Any, **kwargs: Any) -> TaskResult:
        return await self.one("put", index, *args, **kwargs)

    async def delete_one(self, index: int, /, *args: Any, **kwargs: Any) -> TaskResult:
        return await self.one("delete", index, *args, **kwargs)

    async def get_many(self, /, *args: Any, **kwargs: Any) -> list[TaskResult]:
        return await self.many("get", *args, **kwargs)

    async def post_many(self, /, *args: Any, **kwargs: Any) -> list[TaskResult]:
        return await self.many("post", *args, **kwargs)

    async def put_many(self, /, *args: Any, **kwargs: Any) -> list[TaskResult]:
        return await self.many("put", *args, **kwargs)

    async def delete_many(self, /, *args: Any, **kwargs: Any) -> list[TaskResult]:
        return await self.many("delete", *args, **kwargs)

    async def get_async(self, /, *args: Any, **kwargs: Any) -> list[str]:
        return await self.fire("get", *args, **kwargs)

    async def post_async(self, /, *args: Any, **kwargs: Any) -> list[str]:
        return await self.fire("post", *args, **kwargs)

    async def put_async(self, /, *args: Any, **kwargs: Any) -> list[str]:
        return await self.fire("put", *args, **kwargs)

    async def delete_async(self, /, *args: Any, **kwargs: Any) -> list[str]:
        return await self.fire("delete", *args, **kwargs)


def _registry(app: Any) -> Mapping[str, Any]:
    """The app's tasks by name. ``app.tasks`` finalizes the app first (as Celery does on
    first use): until then ``app._tasks`` lacks every ``@app.task`` not yet touched, and a
    route naming one (by name, or with a signature) would go unchecked."""
    try:
        return app.tasks  # type: ignore[no-any-return]
    except RuntimeError:  # autofinalize=False and not finalized: what is registered
        return app._tasks  # type: ignore[no-any-return]


def _without_function(message: str) -> str:
    """``add() missing 1 required ...`` → ``missing 1 required ...``."""
    head, sep, rest = message.partition("() ")
    return rest if sep and head.isidentifier() else message


async def _gather(coros: list[Any]) -> list[Any]:
    """Run concurrently; raise the first error only after all finished (none is orphaned)."""
    outcomes = await asyncio.gather(*coros, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes


class TCeleryNotFoundHandler(JSONErrorsMixin):
    """A JSON 404 for unknown URLs: pass as ``default_handler_class`` to the Application."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def prepare(self) -> None:
        raise HTTPError(404, "no route matches this URL")


@stream_request_body
class TCeleryBaseHandler(JSONErrorsMixin):
    """What both handlers share: the route's class members, the body limit, arguments.

    Class members (set by the route factories): ``uri_path``, ``get_tasks``, ``post_tasks``,
    ``put_tasks``, ``delete_tasks`` (tuples of :class:`TaskSpec`), ``timeout``,
    ``max_body_size``, ``task_options`` (apply_async options), ``producer``,
    ``error_statuses`` (remote exception type name → HTTP status, instead of 500) and
    ``cache`` (the ``cache=`` option's :class:`~tcelery_req_handler.cache.ResultCache`).
    """

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    uri_path: ClassVar[str] = ""
    get_tasks: ClassVar[tuple[TaskSpec, ...]] = ()
    post_tasks: ClassVar[tuple[TaskSpec, ...]] = ()
    put_tasks: ClassVar[tuple[TaskSpec, ...]] = ()
    delete_tasks: ClassVar[tuple[TaskSpec, ...]] = ()
    timeout: ClassVar[float] = DEFAULT_TIMEOUT
    max_body_size: ClassVar[int] = DEFAULT_MAX_BODY_SIZE
    task_options: ClassVar[Mapping[str, Any]] = {}
    producer: ClassVar[Producer | None] = None
    error_statuses: ClassVar[Mapping[str, int]] = {}
    cache: ClassVar[ResultCache | None] = None
    revoke_on_timeout: ClassVar[bool] = False

    def initialize(self) -> None:
        self.task_handler = TaskHandler(self)
        self._chunks: list[bytes] = []
        self._body_size = 0
        #: task id → its status URL, when the app mounts ``tcelery_status_routes``. Its
        #: tasks are then recorded (``rpc://`` keeps their states for the status routes).
        self.status_url = status_url(self)

    def allowed_methods(self) -> list[str]:
        return [verb.upper() for verb in VERBS if getattr(self, f"{verb}_tasks")]

    def the_producer(self) -> Producer:
        """The route's producer, or the one ``setup_nonblocking_producer`` installed."""
        return self.producer or get_producer()

    def cache_outcome(self, outcome: str) -> None:
        """``X-Cache: hit`` when every task of the request came from the cache."""
        if outcome == "miss" or self._headers.get("X-Cache") != "miss":
            self.set_header("X-Cache", outcome)

    def prepare(self) -> None:
        method = self.request.method or ""
        if not self.method_allowed(method):
            raise HTTPError(405, f"{method} is not mapped to any task on this route")
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_body_size:
            raise RequestError(413, f"request body of {length} bytes exceeds the limit of "
                                    f"{self.max_body_size} bytes", limit=self.max_body_size)
        if _overrides(type(self), method.lower()):
            # A custom verb method reads self.request as in any Tornado handler: fill its
            # body and body arguments once the (streamed) body is in.
            arrived = getattr(self.request, "_body_future", None)
            if arrived is not None:
                arrived.add_done_callback(self._fill_request)

    def _fill_request(self, _arrived: Any) -> None:
        """Give ``self.request`` the body and body arguments Tornado leaves empty for a
        streaming handler (``get_body_argument()`` works in a custom handler)."""
        if self._body_size > self.max_body_size:
            return
        request = self.request
        request.body = self.body
        try:
            parse_form_body(request.headers.get("Content-Type", ""), request.body,
                            request.body_arguments, request.files, request.headers)
        except httputil.HTTPInputError:
            return  # request_arguments() answers it with a precise 400
        for name, values in request.body_arguments.items():
            request.arguments.setdefault(name, []).extend(values)

    def data_received(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._body_size <= self.max_body_size:
            self._chunks.append(chunk)
        else:
            self._chunks.clear()

    @property
    def body(self) -> bytes:
        """The request body (read by this handler, which streams it to enforce the limit)."""
        if self._body_size > self.max_body_size:
            raise RequestError(413, f"request body exceeds the limit of {self.max_body_size} "
                                    "bytes", limit=self.max_body_size)
        if len(self._chunks) != 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0]

    def task_arguments(self, /, *path_args: str, **path_kwargs: str
                       ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Map the request to ``(args, kwargs)``; override to change the mapping."""
        return request_arguments(self.request, self.body, path_args, path_kwargs)

    def write_task_error(self, error: TCeleryError) -> None:
        """Answer with the status and JSON body that ``error`` maps to."""
        status, headers, body = error_response(error,
                                               debug=bool(self.settings.get("serve_traceback")))
        if isinstance(error, TaskFailed):
            status = self.error_statuses.get(error.exc_type, status)
        for name, value in headers.items():
            self.set_header(name, value)
        self.write_json(body, status)

    async def run_tasks(self, verb: str, path_args: Sequence[str],
                        path_kwargs: Mapping[str, str]) -> None:
        """Map the request, run the verb's tasks, write the response."""
        raise NotImplementedError

    async def _dispatch(self, verb: str, path_args: Sequence[str],
                        path_kwargs: Mapping[str, str]) -> None:
        try:
            await self.run_tasks(verb, path_args, path_kwargs)
        except TCeleryError as error:
            if self._finished:
                raise
            self.log_exception(type(error), error, None)
            self.write_task_error(error)

    # Plain methods returning the coroutine: Tornado awaits it, and a waiting request keeps
    # one frame less alive.
    def get(self, /, *args: str, **kwargs: str) -> Awaitable[None]:
        return self._dispatch("get", args, kwargs)

    def post(self, /, *args: str, **kwargs: str) -> Awaitable[None]:
        return self._dispatch("post", args, kwargs)

    def put(self, /, *args: str, **kwargs: str) -> Awaitable[None]:
        return self._dispatch("put", args, kwargs)

    def delete(self, /, *args: str, **kwargs: str) -> Awaitable[None]:
        return self._dispatch("delete", args, kwargs)


class TCeleryReqHandler(TCeleryBaseHandler):
    """Waits for the tasks' results: 200 with the result, or the error's status."""

    async def run_tasks(self, verb: str, path_args: Sequence[str],
                        path_kwargs: Mapping[str, str]) -> None:
        args, kwargs = self.task_arguments(*path_args, **path_kwargs)
        results = await self.task_handler.many(verb, *args, **kwargs)
        for result in results:
            error = result.exception()
            if error is not None:
                raise error
        if len(results) == 1:
            self.write_json(results[0].result)
        else:
            self.write_json([result.result for result in results])


class TCeleryAsyncHandler(TCeleryBaseHandler):
    """Fires and forgets: 202 with the task ids, once the broker has confirmed each one
    (and, when the app mounts status routes, ``Location`` and ``status_urls``)."""

    async def run_tasks(self, verb: str, path_args: Sequence[str],
                        path_kwargs: Mapping[str, str]) -> None:
        args, kwargs = self.task_arguments(*path_args, **path_kwargs)
        task_ids = await self.task_handler.fire(verb, *args, **kwargs)
        if self.status_url is None:
            self.write_json({"task_ids": task_ids}, 202)
            return
        urls = [self.status_url(task_id) for task_id in task_ids]
        self.set_header("Location", urls[0])
        self.write_json({"task_ids": task_ids, "status_urls": urls}, 202)
