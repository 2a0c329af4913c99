"""The nonblocking Celery producer: connection lifecycle, confirmed publishing, the default.

One ``Producer`` per process is the norm (``setup_nonblocking_producer`` installs it). It keeps
one AMQP connection, reconnects with backoff when it drops, and restores its reply consumer on
the same named reply queue, so results in flight survive a short drop.

While the broker is unreachable it never hangs: a publish fails fast with ``BrokerUnavailable``
(or, before the first connection, within ``connect_timeout``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import pika
from celery import Celery
from kombu.utils.url import parse_url
from kombu.utils.uuid import uuid

from ._aio import wait_bounded, wait_owned
from .connection import BrokerConnection
from .errors import BrokerUnavailable, ConfigurationError, Overloaded, TCeleryError
from .messages import QueueDeclaration, build_message, check_options, queue_declaration
from .results import ResultRegistry, TaskResult

log = logging.getLogger(__name__)

_AMQP_SCHEMES = {"amqp": False, "pyamqp": False, "amqps": True, "pyamqps": True}


def connection_parameters(broker_url: str, *, heartbeat: float,
                          connect_timeout: float) -> pika.ConnectionParameters:
    """Turn a Celery broker URL (``amqp://``, ``pyamqp://``, ``amqps://``) into pika parameters."""
    url = broker_url.split(";")[0].strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _AMQP_SCHEMES:
        raise ConfigurationError(
            f"broker URL scheme {scheme or url!r} is not supported: tcelery_req_handler "
            "publishes over AMQP, use amqp://, pyamqp:// or amqps://")
    parts = parse_url(url)
    use_ssl = _AMQP_SCHEMES[scheme]
    host = parts.get("hostname") or "localhost"
    ssl_options = None
    if use_ssl:
        ssl_options = pika.SSLOptions(ssl.create_default_context(), server_hostname=host)
    return pika.ConnectionParameters(
        host=host,
        port=int(parts.get("port") or (5671 if use_ssl else 5672)),
        virtual_host=parts.get("virtual_host") or "/",
        credentials=pika.PlainCredentials(parts.get("userid") or "guest",
                                          parts.get("password") or "guest"),
        heartbeat=int(heartbeat),
        connection_attempts=1,
        socket_timeout=connect_timeout,
        stack_timeout=connect_timeout,
        ssl_options=ssl_options,
        client_properties={"connection_name": f"tcelery-req-handler {socket.gethostname()}"
                                              f":{os.getpid()}"},
    )


class Producer:
    """Publishes Celery tasks over one nonblocking AMQP connection and awaits their results.

    Options (all keyword-only, all optional):

    * ``broker_url``: overrides ``app.conf.broker_url``;
    * ``heartbeat``: AMQP heartbeat in seconds (default ``app.conf.broker_heartbeat`` or 60);
    * ``connect_timeout``: bound on opening a connection (default 5 s);
    * ``publish_timeout``: bound on waiting for the broker's confirm or for a resource alarm
      to clear (default 5 s);
    * ``result_timeout``: default bound of ``TaskResult.get`` (default 30 s);
    * ``reconnect_max_delay``: cap of the reconnect backoff (default 2 s);
    * ``reply_queue_expires``: seconds an unused reply queue outlives us (default 300 s);
    * ``reply_prefetch``: unacked replies the broker may push at once (default 1000);
    * ``max_pending``: bound on results awaited at once (default 10 000); past it a waiting
      send raises :class:`~tcelery_req_handler.errors.Overloaded` at once, unpublished.

    Every call is bounded in time: a send waits at most ``connect_timeout`` for a first
    connection, then at most ``publish_timeout`` in all for a resource alarm to clear, its
    queue to be declared and its confirm; ``close()`` at most ``close_timeout``.
    """

    def __init__(
        self,
        celery_app: Celery | None = None,
        *,
        broker_url: str | None = None,
        heartbeat: float | None = None,
        connect_timeout: float = 5.0,
        publish_timeout: float = 5.0,
        result_timeout: float = 30.0,
        reconnect_max_delay: float = 2.0,
        reply_queue_expires: float = 300.0,
        reply_prefetch: int = 1000,
        max_pending: int = 10_000,
        close_timeout: float = 5.0,
    ) -> None:
        if celery_app is None:
            from celery import current_app
            celery_app = current_app._get_current_object()
        self.app: Celery = celery_app
        conf = celery_app.conf
        self.broker_url: str = broker_url or conf.broker_url or "amqp://guest:guest@localhost//"
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.result_timeout = result_timeout
        self.reconnect_max_delay = reconnect_max_delay
        self.reply_prefetch = reply_prefetch
        if max_pending < 1:
            raise ConfigurationError(f"max_pending must be at least 1, not {max_pending!r}")
        self.max_pending = max_pending
        self.close_timeout = close_timeout
        self.parameters = connection_parameters(
            self.broker_url, heartbeat=heartbeat or conf.broker_heartbeat or 60,
            connect_timeout=connect_timeout)
        backend = str(conf.result_backend or "")
        self.result_backend = backend.split("://", 1)[0] if backend else "disabled"
        accept = conf.result_accept_content or conf.accept_content
        self.results = ResultRegistry(accept, result_timeout)
        self.reply_queue = QueueDeclaration(
            name=f"tcelery.reply.{socket.gethostname()}.{os.getpid()}.{uuid()[:8]}",
            durable=True, exclusive=False, auto_delete=False,
            arguments={"x-expires": int(reply_queue_expires * 1000)},
            exchanges=(), bindings=(),
        )
        self._declarations: dict[str, QueueDeclaration] = {}
        self._conn: BrokerConnection | None = None
        self._first: asyncio.Future[BrokerConnection] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._outage: BaseException | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed" if self._closed else "disconnected"
        return f"<Producer {self.parameters.host}:{self.parameters.port} {state}>"

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_open

    @property
    def pending(self) -> int:
        """How many results are still awaited (live waiters in the registry)."""
        return len(self.results)

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the connection now (otherwise the first publish does). BrokerUnavailable
        if the broker cannot be reached within ``connect_timeout``."""
        await self._connection()

    async def close(self) -> None:
        """Close the connection; pending waiters fail with BrokerUnavailable. Idempotent.

        Bounded by ``close_timeout`` even when the broker does not answer. Leaves nothing
        behind: no task, timer or socket in the loop, no consumer and no reply queue on the
        broker (the queue is deleted; were that to fail, ``x-expires`` removes it).
        """
        if self._closed:
            return
        self._closed = True
        closed = BrokerUnavailable("producer closed")
        first, self._first = self._first, None
        if first is not None and not first.done():
            first.set_exception(closed)
            first.exception()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close(self.close_timeout, delete_queue=self.reply_queue.name)
        self.results.abort_all(closed)
        if _default is self:
            _set_default(None)

    async def __aenter__(self) -> Producer:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _connection(self) -> BrokerConnection:
        conn = self._conn
        if conn is not None and conn.is_open:
            return conn
        if self._closed:
            raise BrokerUnavailable("producer is closed")
        if self._outage is not None:
            raise BrokerUnavailable(f"broker unavailable, reconnecting: {self._outage}",
                                    retry_after=self.reconnect_max_delay)
        if self._supervisor is None or self._first is None:
            self._first = asyncio.get_running_loop().create_future()
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        elif self._first.done():  # connected once, now between connections
            raise BrokerUnavailable("broker connection is being re-established",
                                    retry_after=self.reconnect_max_delay)
        try:
            return await wait_bounded(self._first, self.connect_timeout + 0.5)
        except TimeoutError:
            raise BrokerUnavailable("timed out connecting to the broker") from None

    async def _supervise(self) -> None:
        """Keep one connection open: connect, restore the reply consumer, wait for the
        connection to die, back off, reconnect. Runs until ``close()`` cancels it."""
        attempt = 0
        while not self._closed:
            conn: BrokerConnection | None = None
            try:
                conn = await BrokerConnection.open(
                    self.parameters, timeout=self.connect_timeout,
                    prefetch=self.reply_prefetch, on_lost=self._on_lost)
                await asyncio.wait_for(conn.consume(self.reply_queue, self.results.on_reply),
                                       self.connect_timeout)
            except asyncio.CancelledError:
                if conn is not None:
                    await asyncio.shield(conn.close(1.0))
                raise
            except Exception as exc:
                if conn is not None:  # connected, but the reply consumer failed: start over
                    await conn.close(1.0)
                error = exc if isinstance(exc, TCeleryError) else BrokerUnavailable(
                    f"cannot set up the broker connection: {exc!r}")
                if attempt == 0:
                    log.warning("cannot connect to the broker at %s:%s: %s",
                                self.parameters.host, self.parameters.port, error)
                self._outage = error
                if self._first is not None and not self._first.done():
                    self._first.set_exception(error)
                    self._first.exception()
                attempt += 1
                delay = min(self.reconnect_max_delay, 0.05 * 2 ** min(attempt, 10))
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                continue
            if attempt:
                log.info("reconnected to the broker after %d attempt(s)", attempt)
            attempt = 0
            self._conn, self._outage = conn, None
            if self._first is not None and not self._first.done():
                self._first.set_result(conn)
            await asyncio.shield(conn.closed)
            self._conn = None

    def _on_lost(self, reason: BaseException) -> None:
        if not self._closed:
            log.warning("connection to the broker lost (%r); reconnecting", reason)
            self._outage = BrokerUnavailable(f"connection lost: {reason!r}")

    # -- publishing -----------------------------------------------------------------------
    async def apply_async(self, task: Any, args: Sequence[Any] | None = (),
                          kwargs: Mapping[str, Any] | None = None, *, reply: bool = True,
                          **options: Any) -> TaskResult:
        """Send a Celery task (object or registered name) like ``Task.apply_async``.

        Returns once the broker has confirmed the message. With ``reply=False`` no reply
        address is sent: fire and forget, the result is never tracked here.
        """
        name = task if isinstance(task, str) else getattr(task, "name", None)
        if not isinstance(name, str):
            raise TypeError(f"apply_async needs a Celery task or a task name, not {task!r}")
        task_type = None if isinstance(task, str) else task
        return await self._send(name, args, kwargs, options, task_type, reply)

    async def send_task(self, name: str, args: Sequence[Any] | None = (),
                        kwargs: Mapping[str, Any] | None = None, *, reply: bool = True,
                        **options: Any) -> TaskResult:
        """Send a task by name, like ``Celery.send_task``; returns once confirmed."""
        task_type = self.app._tasks.get(name) if hasattr(self.app, "_tasks") else None
        return await self._send(name, args, kwargs, options, task_type, reply)

    async def _send(self, name: str, args: Sequence[Any] | None,
                    kwargs: Mapping[str, Any] | None, options: Mapping[str, Any],
                    task_type: Any, reply: bool) -> TaskResult:
        check_options(options)
        if reply:
            if self.result_backend != "rpc":
                raise ConfigurationError(
                    f"result backend {self.result_backend!r} cannot be awaited by this "
                    "producer: configure result_backend='rpc://', or send with reply=False")
            if len(self.results) >= self.max_pending:
                raise Overloaded(
                    f"{len(self.results)} results already awaited, the limit "
                    f"(max_pending={self.max_pending}): not sending {name}",
                    retry_after=1.0, limit=self.max_pending)
        message = build_message(self.app, name, args, kwargs, options,
                                self.reply_queue.name if reply else "", task_type)
        conn = await self._connection()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        if conn.blocked:
            await conn.wait_unblocked(self.publish_timeout)
        if message.declare is not None:
            declared = conn.declared(self._declaration(message.declare))
            if not declared.done():
                try:
                    await wait_bounded(declared, deadline - loop.time())
                except TimeoutError:
                    conn.check_alive(self.publish_timeout)
                    raise BrokerUnavailable(
                        f"broker did not declare queue {message.declare.name!r} within "
                        f"{self.publish_timeout:g}s", retry_after=self.publish_timeout) from None
            declared.result()
        if loop.time() >= deadline:  # never publish what the caller will be told failed
            raise BrokerUnavailable(
                f"no time left to publish task {message.task_id} within "
                f"{self.publish_timeout:g}s (not sent)", retry_after=self.publish_timeout)
        if reply:
            result = self.results.register(message.task_id)
        else:
            result = TaskResult(message.task_id, tracked=False)
        try:
            await wait_owned(conn.publish(message), deadline - loop.time())
        except TimeoutError:
            self.results.discard(message.task_id)
            why = "publishing is blocked by a resource alarm" if conn.blocked else \
                "no confirm"
            conn.check_alive(self.publish_timeout)
            raise BrokerUnavailable(
                f"broker did not confirm task {message.task_id} within "
                f"{self.publish_timeout:g}s ({why})", retry_after=self.publish_timeout) from None
        except BaseException:
            self.results.discard(message.task_id)
            raise
        return result

    def _declaration(self, queue: Any) -> QueueDeclaration:
        declaration = self._declarations.get(queue.name)
        if declaration is None:
            declaration = self._declarations[queue.name] = queue_declaration(queue)
        return declaration


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
