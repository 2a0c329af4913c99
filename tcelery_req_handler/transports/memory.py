"""The embedded mode: ``broker_url="memory://"`` runs a real Celery worker in a thread of this
process, for demos, tests and single-process apps. Nothing is durable; nothing leaves the
process.

Tasks go through Celery's own machinery: kombu's in-memory transport carries the messages, a
stock ``WorkController`` (the one ``celery.contrib.testing`` uses, with a thread pool) runs
them, with Celery's requests, states, retries, revokes and ``update_state``. Two things are
changed so that nothing waits on a timer:

* the worker's transport wakes up when a message is put (kombu's memory transport polls
  every second instead);
* states reach the event loop by push: :mod:`tcelery_req_handler.backends.memory` stores
  them in memory and hands each one to the loop as it is stored.

The process's logging stays as the app configured it (the worker does not set up logging).
Hard and soft time limits are not enforced: Celery's thread pool cannot interrupt a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from queue import Empty
from typing import Any

from celery import Celery, signals
from celery import _state as celery_state
from celery.worker import state as worker_state
from kombu import Connection, Exchange
from kombu import Producer as KombuProducer
from kombu.transport import memory

from ..errors import BrokerUnavailable, ConfigurationError
from ..messages import ControlMessage, TaskMessage
from . import Transport

log = logging.getLogger(__name__)

TRANSPORT = f"{__name__}:EmbeddedKombuTransport"


class _Arrivals:
    """Wakes the worker thread when a message is put or a task finishes (a generation
    count, so that a wake-up between a failed read and the wait is never lost)."""

    def __init__(self) -> None:
        self.generation = 0
        self.condition = threading.Condition()

    def notify(self) -> None:
        with self.condition:
            self.generation += 1
            self.condition.notify_all()

    def wait(self, generation: int, timeout: float) -> bool:
        """Wait until something happened after ``generation``; False on timeout."""
        with self.condition:
            return self.condition.wait_for(lambda: self.generation != generation, timeout)


ARRIVALS = _Arrivals()


class EmbeddedChannel(memory.Channel):  # type: ignore[misc]
    """kombu's in-memory channel (the same queues), announcing every message it puts."""

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        super()._put(queue, message, **kwargs)
        ARRIVALS.notify()

    def _put_fanout(self, exchange: str, message: Any, routing_key: Any = None,
                    **kwargs: Any) -> None:
        super()._put_fanout(exchange, message, routing_key, **kwargs)
        ARRIVALS.notify()


class EmbeddedKombuTransport(memory.Transport):  # type: ignore[misc]
    """kombu's in-memory transport, woken by arrivals instead of polling every second."""

    Channel = EmbeddedChannel
    driver_name = "tcelery-embedded"

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        get = self.cycle.get
        while True:
            generation = ARRIVALS.generation
            try:
                get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            remaining = 3600.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0 or ARRIVALS.wait(generation, remaining):
                # Woken (a message, or a task that finished and may need its ack sent):
                # return to the worker's loop, which does its pending work and reads again.
                raise TimeoutError


def embed(app: Celery) -> None:
    """Point ``app`` at the embedded broker and the in-memory result store (its own
    ``broker_url`` and ``result_backend`` are replaced: this is what embedded means)."""
    from ..backends.memory import BACKEND

    app.conf.update(
        # a host in the URL: kombu warns "No hostname was supplied" at each start without
        broker_url="memory://localhost//", broker_transport=TRANSPORT, result_backend=BACKEND,
        broker_heartbeat=0, worker_hijack_root_logger=False,
    )
    # ``app.backend`` is built once per thread: drop one built before the switch.
    getattr(app, "_local", threading.local()).__dict__.pop("backend", None)


class MemoryTransport(Transport):
    """Publishes into the in-memory broker and runs the worker thread that consumes it."""

    kind = "memory"
    #: Celery's thread pool cannot kill a running task: ``revoke(terminate=True)`` only
    #: revokes.
    can_terminate = False

    def __init__(self, app: Celery, *, concurrency: int = 4, start_timeout: float = 30.0,
                 stop_timeout: float = 10.0) -> None:
        if concurrency < 1:
            raise ConfigurationError(f"embedded concurrency must be at least 1, not "
                                     f"{concurrency!r}")
        self.app = app
        self.concurrency = concurrency
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        embed(app)
        self._connection: Any = None
        self._producer: Any = None
        self._worker: Any = None
        self._thread: threading.Thread | None = None
        self._started: asyncio.Future[None] | None = None
        self._starter: asyncio.Task[None] | None = None
        self._closed = False
        self._idle_waiters: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous_default_app: Celery | None = None
        self._previous_join_will_block = False

    @property
    def connected(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "connected": self.connected,
                "concurrency": self.concurrency}

    async def connect(self) -> None:
        if self._closed:
            raise BrokerUnavailable("producer is closed")
        loop = asyncio.get_running_loop()
        if self._started is None:
            self._loop = loop
            self._started = loop.create_future()
            self._starter = loop.create_task(self._start())
        try:
            await asyncio.wait_for(asyncio.shield(self._started), self.start_timeout)
        except asyncio.TimeoutError:
            raise BrokerUnavailable(f"the embedded worker did not start within "
                                    f"{self.start_timeout:g}s") from None

    async def _start(self) -> None:
        assert self._started is not None
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._start_worker)
        except Exception as exc:
            log.error("cannot start the embedded worker: %r", exc)
            self._started.set_exception(BrokerUnavailable(
                f"cannot start the embedded worker: {exc!r}"))
            self._started.exception()
            return
        self._started.set_result(None)

    def _start_worker(self) -> None:
        from celery.contrib.testing.worker import TestWorkController

        app = self.app
        app.finalize()
        # The pool's threads run tasks through Celery's *default* app (``current_app`` is
        # per thread): make it this one, as ``celery.contrib.testing`` does.
        app.set_current()
        self._previous_default_app = celery_state.default_app
        app.set_default()  # given back when the worker stops
        # Building the worker sets Celery's process-wide "a join would block" flag (the pool's
        # tasks must not call AsyncResult.get()): put back when it stops, else every later
        # sync .get() in the process raises "Never call result.get() within a task!".
        self._previous_join_will_block = celery_state.task_join_will_block()
        signals.task_postrun.connect(self._on_task_done, weak=False)
        signals.task_revoked.connect(self._on_task_done, weak=False)
        self._connection = Connection(hostname="localhost", transport=TRANSPORT)
        self._producer = KombuProducer(self._connection)
        worker = TestWorkController(
            app=app, pool="threads", concurrency=self.concurrency,
            hostname=f"embedded-{id(self):x}@{socket.gethostname()}",
            without_heartbeat=True, without_mingle=True, without_gossip=True,
            ready_callback=None, loglevel=logging.getLogger().getEffectiveLevel(),
        )
        self._worker = worker
        thread = threading.Thread(target=worker.start, name="tcelery-embedded-worker",
                                  daemon=True)
        self._thread = thread
        thread.start()
        if not worker._on_started.wait(self.start_timeout):
            raise RuntimeError(f"worker not ready within {self.start_timeout:g}s")
        # As celery.contrib.testing does: the process's own code (a user's test, say) may call
        # a stock AsyncResult.get() while the embedded worker runs.
        celery_state._set_task_join_will_block(False)

    async def publish(self, message: TaskMessage | ControlMessage, timeout: float) -> None:
        await self.connect()
        properties = dict(message.properties)
        expiration = properties.pop("expiration", None)
        if isinstance(message, ControlMessage):
            name, kind, durable, auto_delete, arguments = message.declaration.exchanges[0]
            declare: list[Any] = [Exchange(name, kind, durable=durable,
                                           auto_delete=auto_delete, arguments=arguments)]
        else:
            declare = [message.declare] if message.declare is not None else []
        try:
            self._producer.publish(
                message.body, exchange=message.exchange, routing_key=message.routing_key,
                headers=message.headers, declare=declare, retry=False,
                expiration=None if expiration is None else int(expiration) / 1000,
                **properties)
        except Exception as exc:  # an in-memory put only fails on a programming error
            raise BrokerUnavailable(f"embedded broker refused {message.what}: {exc!r}") from exc

    def _on_task_done(self, sender: Any = None, **_: Any) -> None:
        """Worker thread: a task ended; wake the worker loop (acks) and idle waiters."""
        ARRIVALS.notify()
        loop = self._loop
        if loop is not None and self._idle_waiters:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._check_idle)

    def idle(self) -> bool:
        """No message queued for the worker, none it holds unacked (a countdown waiting in
        its timer, a message not yet started), none reserved, none running."""
        queues = memory.Channel.queues
        # Only the worker's own queues: kombu's queues are process-wide, and those of other
        # queues (say, the pidbox of a worker that stopped) are nobody's work to wait for.
        names = self._consumed_queues()
        return not any(queues[name].qsize() for name in names if name in queues) and \
            not self._unacked() and \
            not worker_state.active_requests and not worker_state.reserved_requests

    def _consumed_queues(self) -> list[str]:
        consumer = getattr(getattr(self._worker, "consumer", None), "task_consumer", None)
        queues = getattr(consumer, "queues", None)
        if queues is None:
            queues = list(self.app.amqp.queues.consume_from.values())
        return [queue.name for queue in list(queues)]

    def _unacked(self) -> int:
        """Task messages the worker received and has not acked yet: an ETA (countdown) task
        sits in the worker's timer unacked, and in no queue nor Celery's reserved set."""
        connection = getattr(getattr(self._worker, "consumer", None), "connection", None)
        transport = getattr(connection, "_transport", None)
        count = 0
        for channel in list(getattr(transport, "channels", None) or ()):
            qos = getattr(channel, "_qos", None)
            if qos is not None:
                count += len(qos._delivered) - len(qos._dirty)
        return count

    async def wait_idle(self, timeout: float) -> None:
        """Wait until every queued task has run (TimeoutError after ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.idle():
            waiter = loop.create_future()
            self._idle_waiters.add(waiter)
            try:
                # a finished task wakes the waiter; a task queued by another (a retry, a
                # countdown coming due) is seen at the next wake-up or within 50 ms
                await asyncio.wait_for(waiter, min(0.05, max(deadline - loop.time(), 0)))
            except asyncio.TimeoutError:
                if loop.time() >= deadline:
                    raise TimeoutError(f"queued tasks still running after {timeout:g}s") \
                        from None
            finally:
                self._idle_waiters.discard(waiter)

    def _check_idle(self) -> None:
        for waiter in list(self._idle_waiters):
            if not waiter.done():
                waiter.set_result(None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        signals.task_postrun.disconnect(self._on_task_done)
        signals.task_revoked.disconnect(self._on_task_done)
        thread, worker = self._thread, self._worker
        if worker is not None and thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._stop, worker, thread)
        if self._connection is not None:
            if worker is not None:
                self._drop_pidbox(worker)
            self._connection.release()

    def _drop_pidbox(self, worker: Any) -> None:
        """Delete the stopped worker's control queue: kombu's memory broker is
        process-wide, and every later revoke would otherwise pile up in it, forever."""
        with contextlib.suppress(Exception):
            channel = self._connection.default_channel
            name = self.app.control.mailbox.get_queue(worker.hostname).name
            for exchange, routing_key, arguments in list(channel.state.queue_bindings(name)):
                channel.queue_unbind(name, exchange, routing_key, arguments)
            channel.queue_delete(name)
            memory.Channel.queues.pop(name, None)

    def _stop(self, worker: Any, thread: threading.Thread) -> None:
        _wake_timer_for_shutdown(getattr(worker, "timer", None))
        worker.stop(in_sighandler=False, exitcode=0)
        ARRIVALS.notify()
        thread.join(self.stop_timeout)
        if thread.is_alive():
            log.warning("the embedded worker did not stop within %gs", self.stop_timeout)
        if celery_state.default_app is self.app:  # the embedded app stops being the default
            celery_state.default_app = self._previous_default_app
        celery_state._set_task_join_will_block(self._previous_join_will_block)


def _wake_timer_for_shutdown(timer: Any) -> None:
    """Let the worker's ETA timer (``celery.utils.timer2.Timer``, a thread) stop at once: with
    nothing scheduled it waits on its condition for up to a second and ``Timer.stop`` does not
    wake it, so every stop of a worker that ever ran a countdown or a retry took a second."""
    shutdown = getattr(timer, "_Timer__is_shutdown", None)
    condition = getattr(timer, "not_empty", None)
    if shutdown is None or condition is None or not getattr(timer, "running", False):
        return
    shutdown.set()
    with condition:
        condition.notify_all()
