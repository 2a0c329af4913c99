"""The embedded mode's results: kept in this process's memory, pushed to the loop as stored.

:class:`EmbeddedBackend` is a Celery key-value result backend (selected by its dotted path),
so the worker thread stores states, groups and revokes exactly as it would in Redis; each
task state it stores is handed to the listeners at once, as Redis PUBLISHes it.
:class:`EmbeddedSource` is the listener on the event loop's side. Entries expire after
``result_expires``, like Redis keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.backends.base import KeyValueStoreBackend

from ..results import ResultRegistry, TaskResult
from . import EMBEDDED_BACKEND, ResultSource, plain_meta

BACKEND = EMBEDDED_BACKEND

#: key -> (expires at, value); shared by every thread's backend instance.
_STORE: dict[bytes, tuple[float, Any]] = {}
_LOCK = threading.Lock()
_LISTENERS: list[Callable[[str, bytes], None]] = []
_NEVER = float("inf")


def _key(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


class EmbeddedBackend(KeyValueStoreBackend):  # type: ignore[misc]
    """An in-process key-value result backend whose task states are also pushed."""

    supports_autoexpire = True
    supports_native_join = False
    implements_incr = True

    def _expiry(self) -> float:
        expires = self.expires
        return time.monotonic() + float(expires) if expires else _NEVER

    def get(self, key: Any) -> Any:
        with _LOCK:
            entry = _STORE.get(_key(key))
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del _STORE[_key(key)]
                return None
            return entry[1]

    def mget(self, keys: Any) -> list[Any]:
        return [self.get(key) for key in keys]

    def set(self, key: Any, value: Any) -> None:
        key = _key(key)
        with _LOCK:
            _STORE[key] = (self._expiry(), value)
        prefix = self.task_keyprefix
        if key.startswith(prefix):
            task_id = key[len(prefix):].decode()
            for listener in list(_LISTENERS):
                listener(task_id, value)

    def delete(self, key: Any) -> None:
        with _LOCK:
            _STORE.pop(_key(key), None)

    def incr(self, key: Any) -> int:
        key = _key(key)
        with _LOCK:
            expires, value = _STORE.get(key, (self._expiry(), 0))
            _STORE[key] = (expires, int(value) + 1)
            return int(value) + 1

    def expire(self, key: Any, value: Any) -> None:
        key = _key(key)
        with _LOCK:
            if key in _STORE:
                _STORE[key] = (time.monotonic() + float(value), _STORE[key][1])


class EmbeddedSource(ResultSource):
    """States from :class:`EmbeddedBackend`, delivered on the loop with
    ``call_soon_threadsafe``: push, no polling."""

    kind = "embedded"
    caches = True

    def __init__(self, app: Celery, registry: ResultRegistry, **_: Any) -> None:
        super().__init__(app, registry)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def backend_name(self) -> str:
        return "embedded (in memory)"

    async def start(self) -> None:
        self._listen()

    def _listen(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            _LISTENERS.append(self._on_stored)

    def _on_stored(self, task_id: str, payload: bytes) -> None:
        """Any thread: a state was stored; hand it to the loop if anyone awaits it."""
        loop = self._loop
        if loop is not None and task_id in self.registry:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._deliver, task_id, payload)

    def _deliver(self, task_id: str, payload: bytes) -> None:
        backend = self.app.backend
        self.registry.feed(task_id, plain_meta(backend, backend.decode(payload)))

    async def watch(self, result: TaskResult) -> None:
        self._listen()

    async def lookup(self, result: TaskResult) -> None:
        self._listen()
        backend = self.app.backend
        payload = backend.get(backend.get_key_for_task(result.task_id))
        if payload is not None:
            self._deliver(result.task_id, payload)

    async def cache_get(self, key: str) -> bytes | None:
        value: bytes | None = self.app.backend.get(b"tcelery-cache-" + key.encode())
        return value

    async def cache_set(self, key: str, value: bytes, ttl: float) -> None:
        with _LOCK:
            _STORE[b"tcelery-cache-" + key.encode()] = (time.monotonic() + ttl, value)

    async def close(self) -> None:
        with contextlib.suppress(ValueError):
            _LISTENERS.remove(self._on_stored)
        await super().close()
