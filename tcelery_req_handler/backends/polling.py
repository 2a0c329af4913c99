"""Any other Celery backend (``db+sqlite://``, ``django-db``, ``cache+memcached://``, ...):
polled in a thread pool.

These backends only store states, so each awaited task is read with the backend's own
``get_task_meta`` in a small thread pool, first after 10 ms, then backing off to
``result_poll_interval`` (0.5 s by default). ``app.backend`` is per thread in Celery, so every
pool thread reads through a backend (and a connection) of its own. A read that fails fails the
wait with ``BrokerUnavailable`` (503).
"""

from __future__ import annotations

import asyncio
from typing import Any

from celery import Celery
from celery import states as celery_states

from ..errors import BrokerUnavailable
from ..results import ResultRegistry, TaskResult
from . import ResultSource, plain_meta

FIRST_POLL = 0.01


class PollingSource(ResultSource):
    """One poller per awaited task, all reading in one bounded thread pool."""

    kind = "polling"
    push = False

    def __init__(self, app: Celery, registry: ResultRegistry, *,
                 result_poll_interval: float = 0.5, **_: Any) -> None:
        super().__init__(app, registry)
        self.interval = max(result_poll_interval, FIRST_POLL)
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._failing = False

    async def watch(self, result: TaskResult) -> None:
        self._start(result.task_id)

    async def lookup(self, result: TaskResult) -> None:
        meta = await self._read(result.task_id)
        self._feed(result.task_id, meta)
        if not result.ready():
            self._start(result.task_id)

    def unwatch(self, task_id: str) -> None:
        poller = self._pollers.pop(task_id, None)
        if poller is not None:
            poller.cancel()

    @property
    def healthy(self) -> bool:
        return not self._failing

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "polled": len(self._pollers),
                "interval": self.interval}

    async def close(self) -> None:
        pollers = list(self._pollers.values())
        self._pollers.clear()
        for poller in pollers:
            poller.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        await super().close()

    def _start(self, task_id: str) -> None:
        if task_id not in self._pollers:
            self._pollers[task_id] = asyncio.get_running_loop().create_task(
                self._poll(task_id))

    async def _poll(self, task_id: str) -> None:
        delay = FIRST_POLL
        try:
            while True:
                await asyncio.sleep(delay)
                if task_id not in self.registry:
                    return  # nobody awaits it any more
                try:
                    meta = await self._read(task_id)
                except BrokerUnavailable as error:
                    self.registry.fail(task_id, error)
                    return
                result = self._feed(task_id, meta)
                if result is None or result.ready():
                    return
                # Hold no reference while sleeping, or an abandoned result (the registry
                # keeps it weakly) would stay alive, and polled, until its task ends.
                del result
                delay = min(delay * 2, self.interval)
        finally:
            if self._pollers.get(task_id) is asyncio.current_task():
                del self._pollers[task_id]

    def _feed(self, task_id: str, meta: Any) -> TaskResult | None:
        if isinstance(meta, dict) and meta.get("status", celery_states.PENDING) != \
                celery_states.PENDING:
            return self.registry.feed(task_id, meta)
        return self.registry.get(task_id)

    async def _read(self, task_id: str) -> Any:
        try:
            meta = await self.in_thread(self._read_in_thread, task_id)
        except BrokerUnavailable:
            self._failing = True
            raise
        self._failing = False
        return meta

    def _read_in_thread(self, task_id: str) -> Any:
        backend = self.app.backend  # this thread's own
        return plain_meta(backend, backend.get_task_meta(task_id))
