"""Task results: ``TaskResult`` and its state machine, and the registry of live results.

Whatever the result source (:mod:`tcelery_req_handler.backends`), states reach a result the
same way: the source decodes a stored or published meta (``status``, ``result``,
``traceback``, ``children``, ``date_done``) and feeds it to the registry, which hands it to the
live ``TaskResult`` of that id. PENDING → STARTED / PROGRESS / RETRY … → SUCCESS, FAILURE or
REVOKED; a ready state is final.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections.abc import AsyncIterator
from typing import Any

from celery import states as celery_states

from . import metrics
from ._aio import wait_owned
from .errors import TaskFailed, TaskRevoked, TaskTimeout, TCeleryError

log = logging.getLogger(__name__)

READY_STATES = frozenset(celery_states.READY_STATES)
PENDING = celery_states.PENDING

_QueueItem = tuple[str, Any]


class TaskResult:
    """The state of one task, in Celery's ``AsyncResult`` vocabulary, awaitable.

    ``state`` / ``status`` is the last state received; ``result`` the value (for SUCCESS),
    the exception info (for FAILURE) or the meta of an intermediate state (e.g. PROGRESS).
    """

    __slots__ = ("__weakref__", "_default_timeout", "_error", "_followers", "_history",
                 "_sent_at", "_tracked", "_waiters", "children", "date_done", "result", "state",
                 "task_id", "traceback")

    def __init__(self, task_id: str, *, default_timeout: float = 30.0, tracked: bool = True):
        self.task_id = task_id
        self.state: str = PENDING
        self.result: Any = None
        self.traceback: str | None = None
        self.children: Any = None
        self.date_done: str | None = None
        self._default_timeout = default_timeout
        self._tracked = tracked
        self._error: BaseException | None = None
        self._waiters: list[asyncio.Future[None]] | None = None
        self._followers: list[asyncio.Queue[_QueueItem]] | None = None
        self._history: list[_QueueItem] | None = None
        self._sent_at: float | None = None  # set while metrics time its wait

    def __repr__(self) -> str:
        return f"<TaskResult {self.task_id} {self.state}>"

    @classmethod
    def known(cls, value: Any, task_id: str = "") -> TaskResult:
        """A result that is already SUCCESS (a cache hit: no task was sent)."""
        result = cls(task_id)
        result._update({"status": celery_states.SUCCESS, "result": value})
        return result

    @property
    def status(self) -> str:
        """Alias of ``state``, as in Celery."""
        return self.state

    @property
    def info(self) -> Any:
        """Alias of ``result``, as in Celery."""
        return self.result

    def ready(self) -> bool:
        """True once the task reached SUCCESS, FAILURE or REVOKED (or no reply can come)."""
        return self.state in READY_STATES or self._error is not None

    def successful(self) -> bool:
        return self.state == str(celery_states.SUCCESS)

    def failed(self) -> bool:
        return self.state == str(celery_states.FAILURE)

    async def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Wait for a ready state and return the task's value.

        ``timeout`` defaults to the producer's ``result_timeout``; pass ``math.inf`` to wait
        forever. Raises TaskTimeout, and with ``propagate`` TaskFailed or TaskRevoked.
        """
        if not self._tracked:
            raise TCeleryError(f"task {self.task_id} was sent with reply=False: "
                               "no result will come back")
        if not self.ready():
            limit = self._default_timeout if timeout is None else timeout
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            timed_out = False
            try:
                await (waiter if math.isinf(limit) else wait_owned(waiter, limit))
            except TimeoutError:
                timed_out = True
            finally:
                if self._waiters is not None and waiter in self._waiters:
                    self._waiters.remove(waiter)
            if timed_out:  # raised outside the except block: no context chain to keep alive
                if self._sent_at is not None and metrics.METRICS is not None:
                    metrics.METRICS.result_timed_out(self)
                raise TaskTimeout(self.task_id, limit, self.state)
        return self._outcome(propagate)

    def exception(self) -> BaseException | None:
        """The error this result stands for: TaskFailed for FAILURE, TaskRevoked for
        REVOKED, the reason no reply can come; None while pending or after SUCCESS."""
        if self._error is not None:
            return self._error
        if self.state == celery_states.FAILURE:
            return self._failure()
        if self.state == celery_states.REVOKED:
            return TaskRevoked(self.task_id, _exc_message(self.result) or "revoked")
        return None

    def _outcome(self, propagate: bool) -> Any:
        if self._error is not None:  # raised afresh: each caller's frames are its own
            raise self._error.with_traceback(None)
        if propagate and (error := self.exception()) is not None:
            raise error
        return self.result

    def _failure(self) -> TaskFailed:
        info = self.result if isinstance(self.result, dict) else {}
        return TaskFailed(
            self.task_id,
            str(info.get("exc_type", "Exception")),
            _exc_message(self.result),
            exc_module=info.get("exc_module"),
            traceback=self.traceback,
        )

    async def states(self, timeout: float | None = None) -> AsyncIterator[tuple[str, Any]]:
        """Follow the task: yield ``(state, meta)`` for each state received, from the first
        (states that arrived before the call are replayed), ending at a ready state.
        ``timeout`` bounds the whole follow; TaskTimeout when it runs out.
        """
        if not self._tracked:
            raise TCeleryError(f"task {self.task_id} was sent with reply=False")
        limit = self._default_timeout if timeout is None else timeout
        deadline = asyncio.get_running_loop().time() + limit
        queue: asyncio.Queue[_QueueItem] = asyncio.Queue()
        for item in self._history or ():
            queue.put_nowait(item)
        if self._error is not None:
            queue.put_nowait(("ERROR", str(self._error)))
        if self._followers is None:
            self._followers = []
        self._followers.append(queue)
        try:
            while True:
                if queue.empty() and self._error is not None:
                    raise self._error
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    item = await asyncio.wait_for(queue.get(), max(remaining, 0))
                except asyncio.TimeoutError:
                    if self._sent_at is not None and metrics.METRICS is not None:
                        metrics.METRICS.result_timed_out(self)
                    raise TaskTimeout(self.task_id, limit, self.state) from None
                yield item
                if item[0] in READY_STATES:
                    return
        finally:
            self._followers.remove(queue)

    def _listen(self, queue: asyncio.Queue[_QueueItem] | None = None
                ) -> asyncio.Queue[_QueueItem]:
        """A queue (``queue``, or a new one) that gets ``(state, meta)`` for every state from
        now on; a group passes one queue to all its members."""
        if queue is None:
            queue = asyncio.Queue()
        if self._followers is None:
            self._followers = []
        self._followers.append(queue)
        return queue

    def _unlisten(self, queue: asyncio.Queue[_QueueItem]) -> None:
        if self._followers and queue in self._followers:
            self._followers.remove(queue)

    # -- fed by the registry ---------------------------------------------------------------
    def _update(self, meta: dict[str, Any]) -> None:
        """Take one state. A ready state is final: nothing moves a result back from it
        (a source may deliver a state twice, or an older one late), and a repeat of the
        current state is not a change."""
        state = str(meta.get("status", PENDING))
        if self.state in READY_STATES or self._error is not None:
            return
        result = meta.get("result")
        if state == self.state and result == self.result and self._history:
            return
        if state == PENDING and self._history:
            return  # PENDING is where a task starts, never where it goes back to
        self.state = state
        self.result = result
        self.traceback = meta.get("traceback")
        self.children = meta.get("children")
        self.date_done = meta.get("date_done")
        if self._history is None:
            self._history = []
        self._history.append((self.state, self.result))
        if self._followers:
            for queue in self._followers:
                queue.put_nowait((self.state, self.result))
        if self.state in READY_STATES:
            self._wake()

    def _abort(self, error: BaseException) -> None:
        """No reply can come any more (decode failure, producer closed)."""
        self._error = error
        for queue in self._followers or ():
            queue.put_nowait(("ERROR", str(error)))
        self._wake()

    def _wake(self) -> None:
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)


def _exc_message(info: Any) -> str:
    if not isinstance(info, dict):
        return "" if info is None else str(info)
    message = info.get("exc_message")
    if isinstance(message, (list, tuple)):
        return str(message[0]) if len(message) == 1 else ", ".join(map(str, message))
    return "" if message is None else str(message)


class ResultRegistry:
    """Maps task ids to live ``TaskResult`` objects and feeds them states.

    Results are held *weakly*: a result nobody references any more (a timed-out or abandoned
    request) vanishes from the map by itself, and a late state for it is dropped. One live
    result per task id: a second lookup of the same id returns the same object.
    """

    def __init__(self, default_timeout: float) -> None:
        self.default_timeout = default_timeout
        self._pending: weakref.WeakValueDictionary[str, TaskResult] = (
            weakref.WeakValueDictionary())
        metrics.REGISTRIES.add(self)  # counted by tcelery_results_awaited

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._pending

    def get(self, task_id: str) -> TaskResult | None:
        return self._pending.get(task_id)

    def register(self, task_id: str) -> TaskResult:
        result = self._pending.get(task_id)
        if result is None:
            result = self._pending[task_id] = TaskResult(
                task_id, default_timeout=self.default_timeout)
        return result

    def discard(self, task_id: str) -> None:
        self._pending.pop(task_id, None)

    def feed(self, task_id: str, meta: Any) -> TaskResult | None:
        """Hand one decoded state to its live result; None when nobody awaits ``task_id``."""
        result = self._pending.get(task_id)
        if result is None or not isinstance(meta, dict):
            return result
        result._update(meta)
        if result.state in READY_STATES:
            self._pending.pop(task_id, None)
            if result._sent_at is not None and metrics.METRICS is not None:
                metrics.METRICS.result_ready(result)
        return result

    def fail(self, task_id: str, error: BaseException) -> None:
        """No state can come for ``task_id`` any more (an undecodable reply, say)."""
        result = self._pending.pop(task_id, None)
        if result is not None:
            result._abort(error)

    def abort_all(self, error: BaseException) -> None:
        """Fail every waiter (the producer is closing, the result source is down)."""
        pending = list(self._pending.values())
        self._pending.clear()
        for result in pending:
            result._abort(error)
