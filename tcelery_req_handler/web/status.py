"""Task status routes: look a task up, wait for it, watch it live, revoke it.

``tcelery_status_routes(prefix="/tasks")`` mounts:

* ``GET {prefix}/<task_id>`` → the task's status JSON (``?wait=S`` holds it until ready);
* ``GET {prefix}/<task_id>/events`` → its states as Server-Sent Events;
* ``DELETE {prefix}/<task_id>`` → revoke it (``?terminate=true`` also kills it if running).

A task id is a capability: whoever knows it can read and revoke the task. Lock these routes
down with ``handler=`` (e.g. a mixin with ``get_current_user`` and a ``prepare`` that
refuses anonymous requests).
"""

from __future__ import annotations

import contextlib
import math
import re
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from celery import states as celery_states
from tornado.web import Application, HTTPError, RequestHandler

from ..errors import RequestError, TaskTimeout, TCeleryError
from ..producer import Producer, get_producer
from ..results import READY_STATES, TaskResult
from .base import DEFAULT_TIMEOUT, JSONErrorsMixin
from .events import EventStreamHandler
from .responses import error_response

#: Route name of ``GET {prefix}/<task_id>``; fire-and-forget routes point at it when mounted.
TASK_STATUS_ROUTE = "tcelery.task_status"

_TASK_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,255}")
_SUCCESS = str(celery_states.SUCCESS)
_ERROR_STATES = frozenset({str(celery_states.FAILURE), str(celery_states.REVOKED)})
_PENDING = str(celery_states.PENDING)
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def check_task_id(task_id: str) -> str:
    """The id, or a 400: at most 255 characters from ``[A-Za-z0-9_.:-]``."""
    if not _TASK_ID.fullmatch(task_id):
        raise RequestError(400, "not a task id: at most 255 characters from "
                                "A-Z a-z 0-9 _ . : -", task_id=task_id[:300])
    return task_id


def task_status(task_id: str, state: str, meta: Any, date_done: str | None) -> dict[str, Any]:
    """The status JSON of one task in one state (the same for GET and every SSE event)."""
    error = None
    if state in _ERROR_STATES:
        info = meta if isinstance(meta, dict) else {}
        message = info.get("exc_message", meta if not isinstance(meta, dict) else "")
        if isinstance(message, (list, tuple)):
            message = message[0] if len(message) == 1 else ", ".join(map(str, message))
        error = {"type": str(info.get("exc_type", "TaskRevokedError" if state != "FAILURE"
                                      else "Exception")),
                 "message": "" if message is None else str(message)}
    intermediate = state not in READY_STATES and state != _PENDING
    return {
        "task_id": task_id,
        "state": state,
        "ready": state in READY_STATES,
        "successful": state == _SUCCESS,
        "result": meta if state == _SUCCESS else None,
        "error": error,
        "progress": meta if intermediate else None,
        "date_done": date_done if state in READY_STATES else None,
    }


def result_status(result: TaskResult) -> dict[str, Any]:
    return task_status(result.task_id, result.state, result.result, result.date_done)


_has_status: weakref.WeakKeyDictionary[Application, bool] = weakref.WeakKeyDictionary()


def status_url(handler: RequestHandler) -> Callable[[str], str] | None:
    """A function from task id to its status URL, when the handler's app mounts status
    routes; None otherwise (looked up once per application)."""
    app = handler.application
    mounted = _has_status.get(app)
    if mounted is None:
        try:
            app.reverse_url(TASK_STATUS_ROUTE, "x")
            mounted = True
        except KeyError:
            mounted = False
        _has_status[app] = mounted
    if not mounted:
        return None
    return lambda task_id: app.reverse_url(TASK_STATUS_ROUTE, task_id)


class _StatusBase(JSONErrorsMixin):
    producer: ClassVar[Producer | None] = None
    timeout: ClassVar[float] = DEFAULT_TIMEOUT

    def the_producer(self) -> Producer:
        return self.producer or get_producer()

    def task_json(self, status: dict[str, Any]) -> Any:
        """Hook: the body written for a task's status (GET and every SSE event); override
        it (in a ``handler=`` mixin) to reshape the JSON."""
        return status

    async def lookup(self, task_id: str) -> TaskResult:
        return await self.the_producer().result(check_task_id(task_id))

    def wait_argument(self) -> float:
        """``?wait=S``: 0 when absent, else 0 < S <= the route's timeout (or a 400)."""
        value = self.get_query_argument("wait", None)
        if value is None:
            return 0.0
        try:
            wait = float(value)
        except ValueError:
            wait = math.nan
        if not 0 < wait <= self.timeout:
            raise RequestError(400, f"wait must be a number of seconds above 0 and at most "
                                    f"{self.timeout:g}", argument="wait")
        return wait

    def terminate_argument(self) -> bool:
        """``?terminate=true|false`` (or 1/0, yes/no); a 400 for anything else."""
        given = self.get_query_argument("terminate", "false")
        value = ("false" if given is None else given).lower()  # Optional before Tornado 6.5
        if value not in _BOOLEANS:
            raise RequestError(400, "terminate must be true or false", argument="terminate")
        return _BOOLEANS[value]

    def write_tcelery_error(self, error: TCeleryError) -> None:
        status, headers, body = error_response(
            error, debug=bool(self.settings.get("serve_traceback")))
        for name, value in headers.items():
            self.set_header(name, value)
        self.write_json(body, status)


class TaskStatusHandler(_StatusBase):
    """``GET`` the status of a task (``?wait=S``), ``DELETE`` to revoke it."""

    SUPPORTED_METHODS = ("GET", "HEAD", "DELETE", "POST", "PUT", "PATCH", "OPTIONS")

    def allowed_methods(self) -> list[str]:
        return ["GET", "DELETE"]

    def prepare(self) -> None:
        if not self.method_allowed(self.request.method or ""):
            raise HTTPError(405, f"{self.request.method} is not allowed on a task status")

    async def get(self, task_id: str) -> None:
        try:
            wait = self.wait_argument()
            result = await self.lookup(task_id)
            if wait and not result.ready():
                with contextlib.suppress(TaskTimeout):  # not ready: answer with its state
                    await result.get(timeout=wait, propagate=False)
            error = result.exception()
            if error is not None and result.state not in READY_STATES:
                raise error  # no state can come (backend down, undecodable): not a status
        except TCeleryError as error:
            self.write_tcelery_error(error)
            return
        self.write_json(self.task_json(result_status(result)))

    async def delete(self, task_id: str) -> None:
        try:
            terminate = self.terminate_argument()
            await self.the_producer().revoke(check_task_id(task_id), terminate=terminate)
        except TCeleryError as error:
            self.write_tcelery_error(error)
            return
        self.write_json({"task_id": task_id, "revoked": True}, 202)


class TaskEventsHandler(_StatusBase, EventStreamHandler):
    """``GET`` a task's states as Server-Sent Events, from its current state to a ready one.

    A reconnecting client (``Last-Event-ID``) of a task that is already ready gets 204, which
    tells an EventSource to stop reconnecting.
    """

    def allowed_methods(self) -> list[str]:
        return ["GET"]

    def prepare(self) -> None:
        if not self.method_allowed(self.request.method or ""):
            raise HTTPError(405, f"{self.request.method} is not allowed on an event stream")

    async def get(self, task_id: str) -> None:
        try:
            result = await self.lookup(task_id)
        except TCeleryError as error:
            self.write_tcelery_error(error)
            return
        if result.ready() and self.last_event_id() is not None:
            self.set_status(204)
            self.finish()
            return
        queue = result._listen()
        try:
            first: tuple[str, Any] = (result.state, result.result)
            if result.exception() is not None and result.state not in READY_STATES:
                first = ("ERROR", result.exception())
            await self.stream(first, queue, lambda item: self.event(result, item))
        finally:
            result._unlisten(queue)

    def event(self, result: TaskResult, item: tuple[str, Any]) -> tuple[str, Any, bool]:
        state, meta = item
        if state == "ERROR":  # the source can deliver nothing more (backend down, say)
            failure = result.exception()
            body = error_response(failure)[2] if failure is not None else \
                {"error": {"type": "Unavailable", "message": str(meta)}}
            return "error", {"task_id": result.task_id, **body}, True
        date_done = result.date_done if state in READY_STATES else None
        return state, self.task_json(task_status(result.task_id, state, meta, date_done)), \
            state in READY_STATES
