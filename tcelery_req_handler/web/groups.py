"""Group routes: submit a batch as one Celery group, watch its progress, revoke it.

``tcelery_group_routes(uri_path, task)`` mounts:

* ``POST uri_path`` with ``{"tasks": [...]}`` (each item an object of kwargs, or a list of
  args) → 202 ``{"group_id", "task_ids"}``, ``Location:`` the group;
* ``GET uri_path/<group_id>`` → the group's progress (``?wait=S`` holds it until processed);
* ``GET uri_path/<group_id>/events`` → its progress as Server-Sent Events;
* ``DELETE uri_path/<group_id>`` → revoke every member that is not ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from tornado.web import HTTPError

from ..errors import RequestError, TCeleryError
from ..groups import TaskGroup
from .arguments import parse_json_object
from .events import EventStreamHandler
from .handlers import TCeleryBaseHandler
from .responses import error_response
from .status import _StatusBase, check_task_id

DEFAULT_MAX_GROUP_SIZE = 1000
#: The cache fillers running (held so they are not collected half-way).
_FILLING: set[asyncio.Task[None]] = set()


def group_members(body: Mapping[str, Any], limit: int) -> list[tuple[tuple[Any, ...],
                                                                     dict[str, Any]]]:
    """``{"tasks": [...]}`` → ``(args, kwargs)`` per item; a 400 naming the first problem."""
    items = body.get("tasks")
    if not isinstance(items, list):
        raise RequestError(400, 'the body must be a JSON object {"tasks": [...]}',
                           argument="tasks")
    if not items:
        raise RequestError(400, "tasks is empty: a group needs at least one task",
                           argument="tasks")
    if len(items) > limit:
        raise RequestError(400, f"{len(items)} tasks is more than the limit of {limit} per "
                                "group", argument="tasks", limit=limit)
    extra = sorted(set(body) - {"tasks"})
    if extra:
        raise RequestError(400, f"unknown field {extra[0]!r}: the body holds only tasks",
                           argument=extra[0])
    members: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    for index, item in enumerate(items):
        if isinstance(item, dict):
            if "self" in item:
                raise RequestError(400, f"tasks[{index}]: argument 'self' cannot be passed to "
                                        "a Celery task", argument="self", index=index)
            members.append(((), item))
        elif isinstance(item, list):
            members.append((tuple(item), {}))
        else:
            raise RequestError(400, f"tasks[{index}] is {_json_kind(item)}: each task is an "
                                    "object (its kwargs) or a list (its args)", index=index)
    return members


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a string" if isinstance(value, str) else "a number"


class GroupSubmitHandler(TCeleryBaseHandler):
    """``POST uri_path``: the body's tasks as one group; every item is checked, and cache
    hits are looked up, before anything is sent."""

    max_group_size: ClassVar[int] = DEFAULT_MAX_GROUP_SIZE
    group_route: ClassVar[str] = ""

    async def run_tasks(self, verb: str, path_args: Sequence[str],
                        path_kwargs: Mapping[str, str]) -> None:
        spec = self.post_tasks[0]
        members = [(tuple((*spec.args, *args)), dict(self.task_handler.task_kwargs(spec, kw)))
                   for args, kw in group_members(parse_json_object(self.body),
                                                 self.max_group_size)]
        producer = self.the_producer()
        known: dict[int, Any] = {}
        if self.cache is not None:
            source = producer.require_results("cache=")
            lookups = await asyncio.gather(*(self.cache.get(source, spec.name, args, kwargs)
                                             for args, kwargs in members))
            known = {i: value for i, (hit, value) in enumerate(lookups) if hit}
            self.set_header("X-Cache", "hit" if len(known) == len(members) else "miss")
        group = await producer.apply_group(spec.task or spec.name, members, known=known,
                                           **self.task_handler.options(spec))
        if self.cache is not None and len(known) < len(members):
            filling = asyncio.get_running_loop().create_task(
                _fill_cache(self.cache, producer.require_results("cache="), spec.name,
                            members, group, self.timeout, known))
            _FILLING.add(filling)
            filling.add_done_callback(_FILLING.discard)
        self.set_header("Location", self.reverse_url(self.group_route, group.group_id))
        self.write_json(self.submitted_json({"group_id": group.group_id,
                                             "task_ids": group.task_ids}), 202)

    def submitted_json(self, body: dict[str, Any]) -> Any:
        """Hook: the 202 body of a submitted group; override it to reshape the JSON."""
        return body


async def _fill_cache(cache: Any, source: Any, name: str,
                      members: Sequence[tuple[Sequence[Any], Mapping[str, Any]]],
                      group: TaskGroup, timeout: float, known: Mapping[int, Any]) -> None:
    """Cache each member's SUCCESS as it arrives (within the route's timeout); the members
    that came from the cache (``known``) are not stored again. A member may already be
    ready here (it ran before the last member's confirm came): it is cached too."""

    async def one(index: int) -> None:
        if index in known:
            return
        result = group.results[index]
        try:
            await result.get(timeout=timeout, propagate=False)
        except TCeleryError:
            return
        if result.successful():
            args, kwargs = members[index]
            try:
                await cache.put(source, name, args, kwargs, result.result)
            except TCeleryError:
                return

    await asyncio.gather(*(one(i) for i in range(len(members))))


class _GroupBase(_StatusBase):
    def group_json(self, status: dict[str, Any]) -> Any:
        """Hook: the body written for a group's progress (GET and every SSE event);
        override it (in a ``handler=`` mixin) to reshape the JSON."""
        return status

    async def lookup_group(self, group_id: str) -> TaskGroup:
        return await self.the_producer().group(check_task_id(group_id))


class GroupStatusHandler(_GroupBase):
    """``GET`` a group's progress (``?wait=S``), ``DELETE`` to revoke what is not ready."""

    SUPPORTED_METHODS = ("GET", "HEAD", "DELETE", "POST", "PUT", "PATCH", "OPTIONS")

    def allowed_methods(self) -> list[str]:
        return ["GET", "DELETE"]

    def prepare(self) -> None:
        if not self.method_allowed(self.request.method or ""):
            raise HTTPError(405, f"{self.request.method} is not allowed on a group")

    async def get(self, group_id: str) -> None:
        try:
            wait = self.wait_argument()
            group = await self.lookup_group(group_id)
            if wait:
                await group.wait(wait)
            failure = group.failure()
            if isinstance(failure, TCeleryError):
                raise failure
        except TCeleryError as error:
            self.write_tcelery_error(error)
            return
        self.write_json(self.group_json(group.status()))

    async def delete(self, group_id: str) -> None:
        try:
            terminate = self.terminate_argument()
            group = await self.lookup_group(group_id)
            pending = [r.task_id for r in group.results if not r.ready()]
            await self.the_producer().revoke(pending, terminate=terminate)
        except TCeleryError as error:
            self.write_tcelery_error(error)
            return
        self.write_json({"group_id": group.group_id, "revoked": pending}, 202)


class GroupEventsHandler(_GroupBase, EventStreamHandler):
    """``GET`` a group's progress as Server-Sent Events: the group JSON first, then again
    after member changes (changes that arrive together make one event), until processed."""

    def allowed_methods(self) -> list[str]:
        return ["GET"]

    def prepare(self) -> None:
        if not self.method_allowed(self.request.method or ""):
            raise HTTPError(405, f"{self.request.method} is not allowed on an event stream")

    async def get(self, group_id: str) -> None:
        try:
            group = await self.lookup_group(group_id)
        except TCeleryError as error:
            self.write_tcelery_error(error)
            return
        if group.ready() and self.last_event_id() is not None:
            self.set_status(204)
            self.finish()
            return
        queue = group._listen()
        try:
            await self.stream(None, queue, lambda _item: self.event(group, queue))
        finally:
            group._unlisten(queue)

    def event(self, group: TaskGroup, queue: asyncio.Queue[Any]) -> tuple[str, Any, bool]:
        while not queue.empty():  # coalesce the changes that are already here
            queue.get_nowait()
        failure = group.failure()
        if failure is not None:
            return "error", {"group_id": group.group_id, **error_response(failure)[2]}, True
        status = group.status()
        return ("processed" if status["processed"] else "progress"), self.group_json(status), \
            status["processed"]
