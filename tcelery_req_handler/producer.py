"""The nonblocking Celery producer: what to publish, and where its results come from.

One ``Producer`` per process is the norm (``setup_nonblocking_producer`` installs it). It
builds every message with Celery (:mod:`~tcelery_req_handler.messages`), hands it to a
transport (:mod:`~tcelery_req_handler.transports`: how it reaches the broker, with confirms)
and follows its states through a result source (:mod:`~tcelery_req_handler.backends`: the
app's ``result_backend``, pushed or polled). It picks both from the app's configuration.

Every call is bounded in time, and a broker or result backend that is down fails fast with
``BrokerUnavailable``, never a hang.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery
from kombu.utils.uuid import uuid

from . import metrics, tracing
from .backends import ResultSource, backend_scheme, open_result_source
from .errors import BrokerUnavailable, ConfigurationError, Overloaded, TCeleryError, UnknownTask
from .groups import TaskGroup
from .messages import (
    QueueDeclaration,
    TaskMessage,
    build_message,
    build_revoke,
    build_sent_event,
    check_options,
)
from .results import PENDING, ResultRegistry, TaskResult
from .transports import Transport, transport_kind
from .transports.amqp import AmqpTransport, broker_parameters, broker_urls

log = logging.getLogger(__name__)


class Producer:
    """Publishes Celery tasks without blocking and follows their results.

    Options (all keyword-only, all optional):

    * ``broker_url``: overrides ``app.conf.broker_url``; either may name several nodes
      (``"amqp://a;amqp://b"`` or a list), tried per ``app.conf.broker_failover_strategy``;
      ``app.conf.broker_use_ssl`` turns TLS on (``True`` or py-amqp's dict);
    * ``heartbeat``: AMQP heartbeat in seconds (default ``app.conf.broker_heartbeat`` or 60);
    * ``connect_timeout``: bound on opening a connection, to the broker or the result
      backend (default 5 s);
    * ``publish_timeout``: bound on waiting for the broker's confirm or for a resource alarm
      to clear (default 5 s);
    * ``result_timeout``: default bound of ``TaskResult.get`` (default 30 s);
    * ``reconnect_max_delay``: cap of the reconnect backoff (default 2 s);
    * ``reply_queue_expires``: seconds an unused ``rpc://`` reply queue outlives us (300 s);
    * ``reply_prefetch``: unacked replies the broker may push at once (default 1000);
    * ``max_pending``: bound on results awaited at once (default 10 000); past it a waiting
      send raises :class:`~tcelery_req_handler.errors.Overloaded` at once, unpublished;
    * ``close_timeout``: bound on ``close()`` (default 5 s);
    * ``result_poll_interval``: longest pause between two reads of a polled backend (0.5 s);
    * ``status_ttl``, ``status_max``: how long (3600 s) and how many (100 000) task states
      an ``rpc://`` producer keeps for the status routes;
    * ``embedded_concurrency``: threads of the embedded worker (``broker_url="memory://"``,
      default 4).

    ``broker_url="memory://"`` is the embedded mode: a real Celery worker runs in a thread of
    this process, and results are kept in memory (the app's ``broker_url`` and
    ``result_backend`` are switched to them). For demos, tests and one process: nothing is
    durable, and no other process can see the tasks.
    """

    def __init__(
        self,
        celery_app: Celery | None = None,
        *,
        broker_url: str | Sequence[str] | None = None,
        heartbeat: float | None = None,
        connect_timeout: float = 5.0,
        publish_timeout: float = 5.0,
        result_timeout: float = 30.0,
        reconnect_max_delay: float = 2.0,
        reply_queue_expires: float = 300.0,
        reply_prefetch: int = 1000,
        max_pending: int = 10_000,
        close_timeout: float = 5.0,
        result_poll_interval: float = 0.5,
        status_ttl: float = 3600.0,
        status_max: int = 100_000,
        embedded_concurrency: int = 4,
    ) -> None:
        if celery_app is None:
            from celery import current_app
            celery_app = current_app._get_current_object()
        self.app: Celery = celery_app
        conf = celery_app.conf
        urls = broker_urls(broker_url or conf.broker_url or "amqp://guest:guest@localhost//")
        self.broker_url: str = ";".join(urls)
        self.publish_timeout = publish_timeout
        self.result_timeout = result_timeout
        if max_pending < 1:
            raise ConfigurationError(f"max_pending must be at least 1, not {max_pending!r}")
        self.max_pending = max_pending
        self.results = ResultRegistry(result_timeout)
        self.transport: Transport
        self.source: ResultSource | None
        if transport_kind(self.broker_url) == "memory":  # the embedded mode
            from .backends.memory import EmbeddedSource
            from .transports.memory import MemoryTransport

            self.transport = MemoryTransport(celery_app, concurrency=embedded_concurrency,
                                             stop_timeout=close_timeout)
            self.source = EmbeddedSource(celery_app, self.results)
        else:
            self.transport = AmqpTransport(
                broker_parameters(urls, heartbeat=heartbeat or conf.broker_heartbeat or 60,
                                  connect_timeout=connect_timeout,
                                  use_ssl=conf.broker_use_ssl),
                connect_timeout=connect_timeout, reconnect_max_delay=reconnect_max_delay,
                prefetch=reply_prefetch, close_timeout=close_timeout,
                failover_strategy=conf.broker_failover_strategy, urls=urls)
            self.source = open_result_source(
                celery_app, self.results, self.transport, connect_timeout=connect_timeout,
                reconnect_max_delay=reconnect_max_delay,
                reply_queue_expires=reply_queue_expires,
                result_poll_interval=result_poll_interval, status_ttl=status_ttl,
                status_max=status_max)
        self.result_backend = backend_scheme(celery_app) or "disabled"
        self._closed = False
        self._pid = os.getpid()

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed" if self._closed else "disconnected"
        return f"<Producer {self.transport!r} results={self.result_backend} {state}>"

    @property
    def connected(self) -> bool:
        """True while the broker connection is open."""
        return self.transport.connected

    @property
    def pending(self) -> int:
        """How many results are still awaited (live waiters in the registry)."""
        return len(self.results)

    @property
    def parameters(self) -> Any:
        """The AMQP connection parameters (host, port, vhost)."""
        return getattr(self.transport, "parameters", None)

    @property
    def reply_queue(self) -> QueueDeclaration | None:
        """The ``rpc://`` reply queue, or None with another result backend."""
        return getattr(self.source, "reply_queue", None)

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Embedded mode: wait until every queued task has run (TimeoutError after
        ``timeout``). For tests: ``await producer.wait_idle()`` after fire-and-forget."""
        wait = getattr(self.transport, "wait_idle", None)
        if wait is None:
            raise ConfigurationError("wait_idle() needs the embedded mode (memory://): with "
                                     "a broker, other processes run the tasks")
        await wait(timeout)

    def require_results(self, what: str) -> ResultSource:
        """The result source, or ConfigurationError saying that ``what`` needs one."""
        if self.source is None:
            raise ConfigurationError(
                f"{what} needs a result backend, and app {self.app.main!r} has none: set "
                "result_backend (rpc://, redis://, db+..., ...), or send with reply=False")
        return self.source

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the broker connection (and the result backend's) now, instead of at first
        use. BrokerUnavailable if either cannot be reached within ``connect_timeout``."""
        await self.transport.connect()
        if self.source is not None:
            await self.source.start()

    async def close(self) -> None:
        """Close the connections; pending waiters fail with BrokerUnavailable. Idempotent.

        Bounded by ``close_timeout`` even when the broker does not answer. Leaves nothing
        behind: no task, timer or socket in the loop, no consumer and no reply queue on the
        broker (the queue is deleted; were that to fail, ``x-expires`` removes it).
        """
        if self._closed:
            return
        self._closed = True
        await self.transport.close()
        if self.source is not None:
            await self.source.close()
        self.results.abort_all(BrokerUnavailable("producer closed"))
        if _default is self:
            _set_default(None)

    async def __aenter__(self) -> Producer:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- publishing -----------------------------------------------------------------------
    async def apply_async(self, task: Any, args: Sequence[Any] | None = (),
                          kwargs: Mapping[str, Any] | None = None, *, reply: bool = True,
                          record: bool = False, **options: Any) -> TaskResult:
        """Send a Celery task (object or registered name) like ``Task.apply_async``.

        Returns once the broker has confirmed the message. With ``reply=False`` the result
        is not followed here: fire and forget (with ``rpc://`` no reply address is sent at
        all, unless ``record=True`` asks this process to keep the task's states for
        :meth:`result`).
        """
        name = task if isinstance(task, str) else getattr(task, "name", None)
        if not isinstance(name, str):
            raise TypeError(f"apply_async needs a Celery task or a task name, not {task!r}")
        task_type = None if isinstance(task, str) else task
        return await self._send(name, args, kwargs, options, task_type, reply, record)

    async def send_task(self, name: str, args: Sequence[Any] | None = (),
                        kwargs: Mapping[str, Any] | None = None, *, reply: bool = True,
                        record: bool = False, **options: Any) -> TaskResult:
        """Send a task by name, like ``Celery.send_task``; returns once confirmed."""
        task_type = self.app._tasks.get(name) if hasattr(self.app, "_tasks") else None
        return await self._send(name, args, kwargs, options, task_type, reply, record)

    async def _send(self, name: str, args: Sequence[Any] | None,
                    kwargs: Mapping[str, Any] | None, options: Mapping[str, Any],
                    task_type: Any, reply: bool, record: bool) -> TaskResult:
        check_options(options)
        source = self.source
        if reply:
            source = self.require_results(f"waiting for task {name!r}")
            if len(self.results) >= self.max_pending:
                if metrics.METRICS is not None:
                    metrics.METRICS.published(name, "overloaded")
                raise Overloaded(
                    f"{len(self.results)} results already awaited, the limit "
                    f"(max_pending={self.max_pending}): not sending {name}",
                    retry_after=1.0, limit=self.max_pending)
        recorded = record and source is not None and not source.persistent
        reply_to = source.reply_to if source is not None and (reply or recorded) else ""
        message = build_message(self.app, name, args, kwargs, options, reply_to, task_type)
        task_id = message.task_id
        if reply:
            assert source is not None
            result = self.results.register(task_id)
        else:
            result = TaskResult(task_id, tracked=False)
        if recorded:
            assert source is not None
            source.record(task_id)
        try:
            if reply and source is not None and source.watches:
                await source.watch(result)  # subscribed before the task can run
            await self._publish_task(message)
        except BaseException:
            if reply:
                self.results.discard(task_id)
                assert source is not None
                source.unwatch(task_id)
            raise
        return result

    async def _publish_task(self, message: TaskMessage) -> None:
        """Publish one task as Celery's ``send_task_message`` does: Sentry's headers and
        ``before_task_publish``, the publish (returned once confirmed),
        ``after_task_publish``, then the ``task-sent`` event if the app sends them. The
        signals are sent from this one coroutine, around the await of the confirm."""
        self._check_process()
        tracing.before_publish(self.app, message)
        await (self.transport.publish(message, self.publish_timeout) if metrics.METRICS is None
               else metrics.METRICS.publish(self, message))  # counted, timed
        tracing.after_publish(message)
        if message.sent_event is not None:
            try:
                await self.transport.publish(build_sent_event(self.app, message),
                                             self.publish_timeout)
            except TCeleryError as exc:  # the task is sent: a lost event must not fail it
                log.warning("task-sent event of %s not published: %s", message.task_id, exc)

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise ConfigurationError(
                f"this producer was set up in process {self._pid}, and this is process "
                f"{os.getpid()} (a fork): its connection belongs to the parent. Set up a "
                "producer in each child, after fork_processes(), with "
                "setup_nonblocking_producer()")

    # -- any task, by id ----------------------------------------------------------------------
    async def result(self, task_id: str) -> TaskResult:
        """The current state of any task, by id, followed from now on.

        With a persistent backend (Redis, a database, ...) any task can be looked up, and an
        unknown id reads PENDING, as in Celery. With ``rpc://`` only the tasks this process
        sent are known (the waiting ones, and those sent with ``record=True``); any other id
        raises :class:`~tcelery_req_handler.errors.UnknownTask`.
        """
        source = self.require_results("looking up a task")
        live = self.results.get(task_id)
        if live is not None:
            return live
        result = self.results.register(task_id)
        try:
            await source.lookup(result)
        except BaseException:
            self.results.discard(task_id)
            source.unwatch(task_id)
            raise
        return result

    async def results_of(self, task_ids: Sequence[str]) -> list[TaskResult]:
        """:meth:`result` for many ids at once, with as few backend round trips as the
        backend allows (two on Redis, whatever the number)."""
        source = self.require_results("looking up tasks")
        results = [self.results.register(task_id) for task_id in task_ids]
        fresh = [r for r in results if r.state == PENDING and r._history is None]
        try:
            await source.lookup_many(fresh)
        except BaseException:
            for result in fresh:
                source.unwatch(result.task_id)
            raise
        return results

    # -- groups ---------------------------------------------------------------------------
    async def apply_group(self, task: Any, members: Sequence[tuple[Sequence[Any],
                                                                   Mapping[str, Any]]], *,
                          known: Mapping[int, Any] | None = None,
                          **options: Any) -> TaskGroup:
        """Send one Celery group, as ``group(...).apply_async()`` does, and save it as
        ``GroupResult.save()`` does; returns once the broker confirmed every member.

        ``members`` are ``(args, kwargs)`` pairs, one per task. ``known`` maps member indexes
        to results that are already known (cache hits): those members are not sent, their
        SUCCESS is stored as a worker would store it. Needs a persistent result backend.
        """
        name = task if isinstance(task, str) else getattr(task, "name", None)
        if not isinstance(name, str):
            raise TypeError(f"apply_group needs a Celery task or a task name, not {task!r}")
        task_type = None if isinstance(task, str) else task
        source = self.require_results("a group")
        check_options(options)
        known = known or {}
        if len(self.results) + len(members) > self.max_pending:
            if metrics.METRICS is not None:
                metrics.METRICS.published(name, "overloaded", len(members))
            raise Overloaded(
                f"{len(self.results)} results already awaited: a group of {len(members)} "
                f"would pass the limit (max_pending={self.max_pending}); not sending it",
                retry_after=1.0, limit=self.max_pending)
        group_id = options.pop("group_id", None) or uuid()
        messages = [build_message(self.app, name, args, kwargs,
                                  {**options, "group_id": group_id, "group_index": index},
                                  source.reply_to, task_type)
                    for index, (args, kwargs) in enumerate(members)]
        results = [self.results.register(message.task_id) for message in messages]
        group = TaskGroup(group_id, results)
        sent = [m for i, m in enumerate(messages) if i not in known]
        try:
            await source.save_group(group_id, group.task_ids)
            if source.watches:
                await source.watch_many([r for i, r in enumerate(results) if i not in known])
            for index, value in known.items():
                await source.store_success(messages[index].task_id, value, group_id)
                self.results.feed(messages[index].task_id,
                                  {"status": "SUCCESS", "result": value})
            outcomes = await asyncio.gather(*(self._publish_task(m) for m in sent),
                                            return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        except BaseException:
            for result in results:
                self.results.discard(result.task_id)
                source.unwatch(result.task_id)
            raise
        return group

    async def group(self, group_id: str) -> TaskGroup:
        """A saved group, by id, with its members followed from now on; UnknownGroup if the
        backend keeps no group of that id (it was never saved, or it expired)."""
        source = self.require_results("a group")
        task_ids = await source.restore_group(group_id)
        if task_ids is None:
            raise UnknownTask(group_id, "no group of this id is saved in the result backend",
                              kind="group")
        return TaskGroup(group_id, await self.results_of(task_ids))

    async def revoke(self, task_id: str | Sequence[str], *, terminate: bool = False,
                     signal: str = "SIGTERM") -> None:
        """Revoke tasks as ``celery control revoke`` does: a broadcast on the app's control
        exchange, returned once the broker confirmed it. Workers drop the task when it
        arrives; ``terminate`` also kills it if it is running (prefork pools; not in the
        embedded mode, whose thread pool cannot)."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        if not ids:
            return
        self._check_process()
        if terminate and not getattr(self.transport, "can_terminate", True):
            log.info("the embedded worker cannot terminate running tasks: only revoking %s",
                     ", ".join(ids))
            terminate = False
        await self.transport.publish(build_revoke(self.app, ids, terminate=terminate,
                                                  signal=signal), self.publish_timeout)


_default: Producer | None = None


def _set_default(producer: Producer | None) -> None:
    global _default
    _default = producer


def setup_nonblocking_producer(celery_app: Celery | None = None, **options: Any) -> Producer:
    """Build the process-wide producer for ``celery_app`` (default: Celery's current app)
    and install it as the one every route uses. It connects lazily, on first use or on
    ``await producer.connect()``. Options are those of :class:`Producer`."""
    producer = Producer(celery_app, **options)
    _set_default(producer)
    return producer


def get_producer() -> Producer:
    """The producer installed by ``setup_nonblocking_producer``."""
    if _default is None:
        raise ConfigurationError("no producer installed: call setup_nonblocking_producer() "
                                 "before serving requests")
    return _default
