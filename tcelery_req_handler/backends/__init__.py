"""Where task states come from, behind one small interface.

A result source watches task ids and feeds every state it learns to the producer's
:class:`~tcelery_req_handler.results.ResultRegistry`:

============  ========================================  ====================================
module        backends (``result_backend``)             how states arrive
============  ========================================  ====================================
``rpc``       ``rpc://``                                push: our AMQP reply queue
``redis``     ``redis://``, ``rediss://``               push: Redis pub/sub, one connection
``polling``   any other Celery backend (``db+…``,       poll in a thread pool, backing off
              ``django-db``, ``cache+…``, …)            from 10 ms to ``result_poll_interval``
============  ========================================  ====================================

:func:`open_result_source` picks one from the app's configuration. A new backend is a new
module here implementing :class:`ResultSource`; nothing else needs to change.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from celery import states as celery_states
from celery.app.task import Context

from ..errors import BrokerUnavailable, ConfigurationError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The embedded mode's result backend (``backends/memory.py``), by Celery's dotted path.
EMBEDDED_BACKEND = f"{__name__}.memory:EmbeddedBackend"
#: Schemes whose backends can hold the ``cache=`` option's results.
CACHE_SCHEMES = frozenset({"redis", "rediss", "embedded"})

if TYPE_CHECKING:
    from celery import Celery

    from ..results import ResultRegistry, TaskResult
    from ..transports import Transport


class ResultSource(abc.ABC):
    """Feeds task states into a registry.

    ``watch`` is awaited *before* the task is published (so that no state can be missed);
    ``lookup`` is for ids this process did not send, and reads the current state first.
    """

    #: Short name for errors, docs and health reports: "rpc", "redis", "polling".
    kind: str = ""
    #: True when any process can read any task (a persistent backend); False for rpc://.
    persistent: bool = True
    #: True when states are pushed to us; False when we poll for them.
    push: bool = True
    #: The reply address a task must carry for its states to reach this source ("" = none).
    reply_to: str = ""
    #: True when ``watch`` does work (else the producer skips the call on the hot path).
    watches: bool = True
    #: True when the backend can hold the ``cache=`` route option's results.
    caches: bool = False

    #: Threads for blocking backend calls (groups, stored results, polling).
    threads: int = 4

    def __init__(self, app: Celery, registry: ResultRegistry) -> None:
        self.app = app
        self.registry = registry
        self._threads: ThreadPoolExecutor | None = None

    @property
    def backend_name(self) -> str:
        """The configured backend, without credentials: ``redis://host:port/db``."""
        return _redacted(str(self.app.conf.result_backend or ""))

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect, where the source needs a connection of its own."""

    @abc.abstractmethod
    async def watch(self, result: TaskResult) -> None:
        """Start feeding ``result`` the states of its task (BrokerUnavailable if it cannot)."""

    @abc.abstractmethod
    async def lookup(self, result: TaskResult) -> None:
        """Like ``watch``, for a task sent elsewhere or earlier: also read its current state.

        Raises :class:`~tcelery_req_handler.errors.UnknownTask` where the source cannot know
        the task (rpc://, for a task this process did not send).
        """

    def unwatch(self, task_id: str) -> None:  # noqa: B027 - optional hook
        """Stop feeding ``task_id`` (its publish failed, or nobody awaits it any more)."""

    def record(self, task_id: str) -> None:  # noqa: B027 - optional hook
        """Remember the states of ``task_id`` for later lookups (rpc:// only keeps them
        for tasks it is told to record; persistent backends keep every task anyway)."""

    async def lookup_many(self, results: Sequence[TaskResult]) -> None:
        """``lookup`` for many tasks at once (a group's members): as few round trips as the
        backend allows, and a bounded number of reads in flight."""
        for result in results:
            await self.lookup(result)

    async def watch_many(self, results: Sequence[TaskResult]) -> None:
        """``watch`` for many tasks at once (before publishing a group)."""
        for result in results:
            await self.watch(result)

    # -- groups and stored results: Celery's own backend code, run in a thread ---------------
    async def save_group(self, group_id: str, task_ids: Sequence[str]) -> None:
        """Store the group as ``GroupResult.save()`` does, so any process can restore it."""
        await self.in_thread(self._save_group, group_id, list(task_ids))

    async def restore_group(self, group_id: str) -> list[str] | None:
        """The member ids of a saved group, in submission order; None if unknown."""
        ids: list[str] | None = await self.in_thread(self._restore_group, group_id)
        return ids

    async def store_success(self, task_id: str, value: Any, group_id: str | None) -> None:
        """Store ``value`` as the SUCCESS of ``task_id`` exactly as a worker would (a cache
        hit that no worker runs still has a result everyone can read)."""
        await self.in_thread(self._store_success, task_id, value, group_id)

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking backend code in this source's small thread pool (``app.backend`` is
        per thread, so each pool thread has its own backend and connection); a failure is
        BrokerUnavailable, naming the backend."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=self.threads,
                                               thread_name_prefix=f"tcelery-{self.kind}")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)
        except Exception as exc:
            log.warning("result backend %s failed: %r", self.backend_name, exc)
            raise BrokerUnavailable(f"result backend {self.backend_name} unavailable "
                                    f"({type(exc).__name__})",
                                    service="result backend") from None

    def _save_group(self, group_id: str, task_ids: list[str]) -> None:
        app = self.app
        app.GroupResult(group_id, [app.AsyncResult(t) for t in task_ids]).save(
            backend=app.backend)

    def _restore_group(self, group_id: str) -> list[str] | None:
        app = self.app
        group = app.GroupResult.restore(group_id, backend=app.backend, app=app)
        return None if group is None else [member.id for member in group.results]

    def _store_success(self, task_id: str, value: Any, group_id: str | None) -> None:
        self.app.backend.store_result(task_id, value, celery_states.SUCCESS,
                                      request=Context(id=task_id, group=group_id))

    async def cache_get(self, key: str) -> bytes | None:
        """A cached result (``caches`` sources only)."""
        raise ConfigurationError(f"result backend {self.backend_name!r} cannot hold a cache")

    async def cache_set(self, key: str, value: bytes, ttl: float) -> None:
        """Cache ``value`` for ``ttl`` seconds (``caches`` sources only)."""
        raise ConfigurationError(f"result backend {self.backend_name!r} cannot hold a cache")

    @property
    def healthy(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        """What the source reads, for health reports (no secrets)."""
        return {"kind": self.kind, "backend": self.backend_name, "healthy": self.healthy}

    async def close(self) -> None:
        """Release connections and threads."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)


def backend_scheme(app: Celery) -> str:
    """The scheme of ``app.conf.result_backend`` (``"rpc"``, ``"redis"``, ``"db+sqlite"``,
    ``"django-db"``, ``"embedded"``, ...), or ``""`` when the app keeps no results."""
    backend = app.conf.result_backend
    if not backend or backend == "disabled":
        return ""
    if backend == EMBEDDED_BACKEND:
        return "embedded"
    if not isinstance(backend, str):  # a backend class
        return getattr(backend, "__name__", "custom").lower()
    return backend.split("://", 1)[0].lower() if "://" in backend else backend.lower()


def open_result_source(app: Celery, registry: ResultRegistry, transport: Transport,
                       **options: Any) -> ResultSource | None:
    """The result source for ``app``'s backend, or None when the app keeps no results.

    Raises ConfigurationError, naming the backend, when it cannot be read: an unknown
    scheme, a driver that is not installed, an rpc:// backend without an AMQP broker.
    """
    scheme = backend_scheme(app)
    if not scheme:
        return None
    if scheme == "rpc":
        from .rpc import RpcSource

        return RpcSource(app, registry, transport, **options)
    try:
        backend = app.backend  # builds it: an unknown scheme or a missing driver fails here
        if type(backend).__name__ == "DatabaseBackend":  # Celery < 5.5 connects lazily
            from sqlalchemy.engine import make_url

            make_url(backend.url).get_dialect()
    except Exception as exc:
        raise ConfigurationError(
            f"result backend {_redacted(str(app.conf.result_backend))!r} cannot be used: "
            f"{exc}") from exc
    if scheme in ("redis", "rediss") and type(backend).__name__ == "RedisBackend":
        from .redis import RedisSource

        return RedisSource(app, registry, **options)
    from .polling import PollingSource

    return PollingSource(app, registry, **options)


def plain_meta(backend: Any, meta: Any) -> Any:
    """A decoded meta as rpc:// sends it: a failure as ``{"exc_type", "exc_message",
    "exc_module"}`` (also where the backend revived an exception), ``date_done`` in ISO 8601."""
    if not isinstance(meta, dict):
        return meta
    if isinstance(meta.get("result"), BaseException):
        meta = {**meta, "result": backend.prepare_exception(meta["result"], "json")}
    if isinstance(meta.get("date_done"), datetime):  # the database backends keep datetimes
        meta = {**meta, "date_done": meta["date_done"].isoformat()}
    return meta


def _redacted(url: str) -> str:
    """``scheme://user:secret@host/...`` → ``scheme://user:***@host/...``."""
    head, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    auth, _, host = rest.partition("@")
    user = auth.split(":", 1)[0]
    return f"{head}://{user}:***@{host}" if ":" in auth else f"{head}://{user}@{host}"
