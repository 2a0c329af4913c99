"""Celery groups followed live: ``TaskGroup`` and its progress.

A group is sent as ``group(...).apply_async()`` sends it (every member carries the ``group``
and ``group_index`` headers) and saved as ``GroupResult.save()`` saves it, so any process can
restore it. Its progress is computed from its members' ``TaskResult`` objects, which the
result source keeps current (Redis by push, other backends by polling), so reading a group's
progress costs no round trip once it is followed, however often it is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from celery import states as celery_states

from .results import READY_STATES, TaskResult, _QueueItem

_SUCCESS = str(celery_states.SUCCESS)


class TaskGroup:
    """A group's members, in submission order, with Celery's ``GroupResult`` vocabulary."""

    __slots__ = ("__weakref__", "group_id", "results")

    def __init__(self, group_id: str, results: Sequence[TaskResult]) -> None:
        self.group_id = group_id
        self.results = list(results)

    def __repr__(self) -> str:
        return f"<TaskGroup {self.group_id} {self.completed_count()}/{len(self.results)}>"

    @property
    def task_ids(self) -> list[str]:
        return [result.task_id for result in self.results]

    def ready(self) -> bool:
        """True once every member is in a ready state (SUCCESS, FAILURE, REVOKED)."""
        return all(result.ready() for result in self.results)

    def failure(self) -> BaseException | None:
        """Why no state can reach some member any more (its result source went down), or
        None. Such a group cannot make progress: its routes answer with this error."""
        for result in self.results:
            if result.state not in READY_STATES and result.exception() is not None:
                return result.exception()
        return None

    def completed_count(self) -> int:
        """Members in a ready state, failures included (Celery's own ``completed_count``
        counts successes only: that is ``succeeded_count``)."""
        return sum(1 for result in self.results if result.ready())

    def succeeded_count(self) -> int:
        return sum(1 for result in self.results if result.state == _SUCCESS)

    def status(self) -> dict[str, Any]:
        """The group's progress, as the group routes answer it."""
        states = [result.state for result in self.results]
        completed = sum(1 for state in states if state in READY_STATES)
        succeeded = sum(1 for state in states if state == _SUCCESS)
        failed = completed - succeeded
        return {
            "group_id": self.group_id,
            "tasks_total": len(states),
            "tasks_completed": completed,
            "tasks_succeeded": succeeded,
            "tasks_failed": failed,
            "processed": completed == len(states),
            "succeeded": failed == 0,
            "results": [result.result if result.state == _SUCCESS else None
                        for result in self.results],
            "states": states,
        }

    async def wait(self, timeout: float) -> bool:
        """Wait until the group is processed or ``timeout`` passed; True if processed."""
        if self.ready():
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        queue = self._listen()
        try:
            while not self.ready() and self.failure() is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    return self.ready()
            return True
        finally:
            self._unlisten(queue)

    def _listen(self) -> asyncio.Queue[_QueueItem]:
        """One queue that gets an item whenever any member changes state."""
        queue: asyncio.Queue[_QueueItem] = asyncio.Queue()
        for result in self.results:
            result._listen(queue)
        return queue

    def _unlisten(self, queue: asyncio.Queue[_QueueItem]) -> None:
        for result in self.results:
            result._unlisten(queue)
