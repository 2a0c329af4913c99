"""``redis://`` / ``rediss://``: states pushed over one Redis pub/sub connection.

The worker's Redis backend stores every state under ``celery-task-meta-<id>`` (after any
``global_keyprefix``) and PUBLISHes the same bytes on a channel of that name, in one
MULTI/EXEC. So:

* a task this process sends is SUBSCRIBEd, and the subscription *confirmed*, before the task
  is published: no state of it can be missed;
* a task sent elsewhere is SUBSCRIBEd, confirmed, then read with GET: a state stored before
  the subscription took effect is caught by the GET, any later one by pub/sub;
* after a reconnect every channel still awaited is subscribed again, confirmed, then all keys
  are read with one MGET: states stored while the connection was down are not lost;
* a state can arrive twice (GET and pub/sub) or late; :class:`~tcelery_req_handler.results.
  TaskResult` keeps the latest and never leaves a ready state.

If the connection cannot be re-established within ``connect_timeout``, every wait fails with
``BrokerUnavailable`` (503), new waits fail at once, and the source keeps reconnecting by
itself. Payloads are decoded by the app's backend (``result_accept_content``, and the
``result_compression`` framing of Celery 5.7).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from celery import Celery
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.utils.uuid import uuid

from .. import metrics
from .._aio import wait_bounded
from ..errors import BrokerUnavailable, ConfigurationError, ResultDecodeError
from ..results import READY_STATES, ResultRegistry, TaskResult
from . import ResultSource, plain_meta

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError:  # pragma: no cover - the [redis] extra is not installed
    aioredis = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Connections for GET/MGET/SET besides the pub/sub one (waits share a few round trips).
_POOL_SIZE = 32
#: Seconds without any message before the connection is probed; two silent ticks in a row
#: mean a dead connection (a silent partition sends no FIN).
_TICK = 5.0


class RedisSource(ResultSource):
    """Every wait of the process over one pub/sub connection (plus a pool for GET/MGET)."""

    kind = "redis"
    caches = True

    def __init__(self, app: Celery, registry: ResultRegistry, *, connect_timeout: float = 5.0,
                 reconnect_max_delay: float = 2.0, **_: Any) -> None:
        super().__init__(app, registry)
        if aioredis is None:
            raise ConfigurationError(
                f"result backend {self.backend_name!r} needs redis-py: "
                "pip install 'tcelery-req-handler[redis]'")
        self.backend = app.backend
        self.connect_timeout = connect_timeout
        self.reconnect_max_delay = reconnect_max_delay
        self._url = str(app.conf.result_backend)
        self._client: Any = None
        self._pubsub: Any = None
        self._own_channel = f"tcelery-ctl-{uuid()}".encode()
        self._channels: dict[bytes, str] = {}      # watched channel -> task id
        self._confirmed: set[bytes] = set()        # subscribed on the current connection
        self._confirms: dict[bytes, asyncio.Future[None]] = {}
        self._to_subscribe: set[bytes] = set()
        self._to_unsubscribe: set[bytes] = set()
        self._flushing = False
        self._up: asyncio.Future[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._outage: BrokerUnavailable | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.reconnects = 0

    # -- the interface ----------------------------------------------------------------------
    def key(self, task_id: str) -> bytes:
        key: bytes = self.backend.get_key_for_task(task_id)
        return key

    async def start(self) -> None:
        await self._connected()

    async def watch(self, result: TaskResult) -> None:
        channel = self.key(result.task_id)
        self._channels[channel] = result.task_id
        self._to_unsubscribe.discard(channel)
        try:
            await self._connected()
            if channel in self._confirmed:
                return
            confirm = self._confirms.get(channel)
            if confirm is None:
                confirm = self._confirms[channel] = asyncio.get_running_loop().create_future()
                self._to_subscribe.add(channel)
                self._schedule_flush()
            try:
                await wait_bounded(confirm, self.connect_timeout)
            except TimeoutError:
                raise BrokerUnavailable(
                    f"result backend {self.backend_name} did not confirm a subscription "
                    f"within {self.connect_timeout:g}s", service="result backend") from None
        except BaseException:
            self.unwatch(result.task_id)
            raise

    async def lookup(self, result: TaskResult) -> None:
        await self.watch(result)
        payload = await self._call(self._client.get(self.key(result.task_id)))
        if payload is not None:
            self._deliver(result.task_id, payload)

    async def watch_many(self, results: Sequence[TaskResult]) -> None:
        """One SUBSCRIBE for all of them (the flush batches a loop turn's channels)."""
        outcomes = await asyncio.gather(*(self.watch(r) for r in results),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                for result in results:
                    self.unwatch(result.task_id)
                raise outcome

    async def lookup_many(self, results: Sequence[TaskResult]) -> None:
        """Subscribe all, then read all with one MGET: two round trips for any size."""
        if not results:
            return
        await self.watch_many(results)
        keys = [self.key(r.task_id) for r in results]
        payloads = await self._call(self._client.mget(keys))
        for result, payload in zip(results, payloads, strict=True):
            if payload is not None:
                self._deliver(result.task_id, payload)

    async def restore_group(self, group_id: str) -> list[str] | None:
        """One GET of ``celery-taskset-meta-<id>``, as ``GroupResult.restore`` reads it."""
        await self._connected()
        payload = await self._call(self._client.get(self.backend.get_key_for_group(group_id)))
        if payload is None:
            return None
        try:
            stored = self.backend.decode(payload)
            return [str(member[0][0]) for member in stored["result"][1]]
        except (ContentDisallowed, DecodeError, LookupError, TypeError, ValueError) as exc:
            raise ResultDecodeError(group_id, "redis group payload") from exc

    async def cache_get(self, key: str) -> bytes | None:
        await self._connected()
        value: bytes | None = await self._call(self._client.get(self._cache_key(key)))
        return value

    async def cache_set(self, key: str, value: bytes, ttl: float) -> None:
        await self._connected()
        await self._call(self._client.set(self._cache_key(key), value,
                                          px=max(1, int(ttl * 1000))))

    def _cache_key(self, key: str) -> bytes:
        """``tcelery-cache-<key>``, after the app's ``global_keyprefix`` like Celery's keys."""
        prefix: bytes = self.backend.task_keyprefix
        return prefix.replace(b"celery-task-meta-", b"tcelery-cache-") + key.encode()

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(awaitable, self.connect_timeout)
        except Exception as exc:
            raise self._unavailable(exc) from None

    def unwatch(self, task_id: str) -> None:
        channel = self.key(task_id)
        if self._channels.pop(channel, None) is None:
            return
        self._to_subscribe.discard(channel)
        if channel in self._confirmed or channel in self._confirms:
            self._to_unsubscribe.add(channel)
            self._schedule_flush()

    @property
    def healthy(self) -> bool:
        return self._outage is None and self._up is not None and self._up.done() \
            and not self._up.cancelled() and self._up.exception() is None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "watched": len(self._channels),
                "reconnects": self.reconnects}

    async def close(self) -> None:
        self._closed = True
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        await self._drop_connection()
        for confirm in self._confirms.values():
            _fail(confirm, BrokerUnavailable("producer closed"))
        self._confirms.clear()
        self._channels.clear()

    # -- the connection -----------------------------------------------------------------------
    async def _connected(self) -> None:
        if self._closed:
            raise BrokerUnavailable("producer is closed")
        if self._outage is not None:
            raise _fresh(self._outage)
        if self._supervisor is None:
            self._up = asyncio.get_running_loop().create_future()
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        assert self._up is not None
        if self._up.done():
            self._up.result()
            return
        try:
            await wait_bounded(self._up, self.connect_timeout + 0.5)
        except TimeoutError:
            raise BrokerUnavailable(f"timed out connecting to the result backend "
                                    f"{self.backend_name}",
                                    service="result backend") from None

    async def _supervise(self) -> None:
        attempt = 0
        lost = False  # a connection was up and broke: the next open is a reconnect
        while not self._closed:
            try:
                found = await asyncio.wait_for(self._open(), self.connect_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._drop_connection()
                error = self._unavailable(exc)
                if attempt == 0:
                    log.warning("%s", error)
                self._outage = error
                if self._up is not None and not self._up.done():
                    self._up.set_exception(error)
                    self._up.exception()
                self._arm_abort(error)
                attempt += 1
                delay = min(self.reconnect_max_delay, 0.05 * 2 ** min(attempt, 10))
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                continue
            if attempt or lost:
                self.reconnects += 1
                if metrics.METRICS is not None:
                    metrics.METRICS.reconnected("result_backend")
                log.info("reconnected to the result backend after %d attempt(s)",
                         attempt + 1)
            attempt = 0
            lost = False
            self._outage = None
            if self._abort_timer is not None:
                self._abort_timer.cancel()
                self._abort_timer = None
            if self._up is None or self._up.done():
                self._up = asyncio.get_running_loop().create_future()
            self._up.set_result(None)
            # Delivered only now that the source is up: a waiter woken by one of these may
            # send a new task at once, and the channels it lets go of are unsubscribed.
            for channel, payload in found:
                task_id = self._channels.get(channel)
                if task_id is not None:
                    self._deliver(task_id, payload)
            if self._to_unsubscribe:
                self._schedule_flush()
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = self._unavailable(exc)
                log.warning("%s", error)
                self._outage = error
                self._arm_abort(error)
            lost = True
            await self._drop_connection()

    async def _open(self) -> list[tuple[bytes, bytes]]:
        """Connect, subscribe every watched channel again, wait for the confirmations, then
        read every watched key: returns whatever was published or stored meanwhile, as
        ``(channel, payload)`` in arrival order, for the supervisor to deliver once up."""
        # A bounded pool that makes a burst of reads queue for a connection (for at most
        # connect_timeout) instead of failing past redis-py's default of 100.
        pool = aioredis.BlockingConnectionPool.from_url(
            self._url, max_connections=_POOL_SIZE, timeout=self.connect_timeout,
            retry=Retry(NoBackoff(), 0), socket_connect_timeout=self.connect_timeout,
            **_ssl_options(self.app))
        self._client = aioredis.Redis(connection_pool=pool)
        await self._client.ping()
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=False)
        channels = list(self._channels)
        self._confirmed.clear()
        self._to_subscribe.clear()
        self._to_unsubscribe.clear()
        for channel in channels:
            if channel not in self._confirms:
                self._confirms[channel] = asyncio.get_running_loop().create_future()
        await self._pubsub.subscribe(self._own_channel, *channels)
        pending = set(channels) | {self._own_channel}
        found: list[tuple[bytes, bytes]] = []
        while pending:
            message = await self._pubsub.get_message(timeout=self.connect_timeout)
            if message is None:
                raise BrokerUnavailable("no subscription confirmation from the result "
                                        "backend", service="result backend")
            if message["type"] == "message":
                found.append((message["channel"], message["data"]))
            else:
                self._handle(message)
            if message["type"] == "subscribe":
                pending.discard(message["channel"])
        if channels:
            payloads = await self._client.mget(channels)
            found += [(channel, payload) for channel, payload
                      in zip(channels, payloads, strict=True) if payload is not None]
        return found

    async def _read(self) -> None:
        silent = 0
        loop = asyncio.get_running_loop()
        swept = loop.time()
        while True:
            message = await self._pubsub.get_message(timeout=_TICK)
            if message is None:
                silent += 1
                if silent >= 2:
                    raise BrokerUnavailable("the result backend stopped answering",
                                            service="result backend")
                await self._pubsub.ping()
                swept = loop.time()
                self._sweep()  # a quiet connection still lets go of abandoned channels
                continue
            silent = 0
            self._handle(message)
            if loop.time() - swept > _TICK:
                swept = loop.time()
                self._sweep()

    def _handle(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "message":
            task_id = self._channels.get(channel)
            if task_id is not None:
                self._deliver(task_id, message["data"])
        elif kind == "subscribe":
            self._confirmed.add(channel)
            confirm = self._confirms.pop(channel, None)
            if confirm is not None and not confirm.done():
                confirm.set_result(None)
        elif kind == "unsubscribe":
            self._confirmed.discard(channel)

    def _deliver(self, task_id: str, payload: bytes) -> None:
        try:
            meta = plain_meta(self.backend, self.backend.decode(payload))
        except (ContentDisallowed, DecodeError, ValueError, TypeError) as exc:
            log.warning("undecodable result for %s: %s", task_id, exc)
            self.registry.fail(task_id, ResultDecodeError(task_id, "redis payload"))
            self.unwatch(task_id)
            return
        result = self.registry.feed(task_id, meta)
        if result is None or result.state in READY_STATES:
            self.unwatch(task_id)

    def _sweep(self) -> None:
        """Unsubscribe the channels whose results nobody holds any more."""
        for task_id in list(self._channels.values()):
            if task_id not in self.registry:
                self.unwatch(task_id)

    def _schedule_flush(self) -> None:
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """One SUBSCRIBE and one UNSUBSCRIBE for everything asked during a loop turn."""
        self._flushing = False
        subscribe, self._to_subscribe = self._to_subscribe, set()
        unsubscribe, self._to_unsubscribe = self._to_unsubscribe, set()
        pubsub = self._pubsub
        if pubsub is None or self._outage is not None:
            # _open subscribes every watched channel once connected again; an UNSUBSCRIBE
            # asked meanwhile is kept for the connection being opened (_open starts afresh)
            self._to_unsubscribe |= unsubscribe
            return
        try:
            if unsubscribe:
                await pubsub.unsubscribe(*unsubscribe)
            if subscribe:
                await pubsub.subscribe(*subscribe)
        except Exception as exc:  # the reader sees the same failure and reconnects
            error = self._unavailable(exc)
            for channel in subscribe:
                confirm = self._confirms.pop(channel, None)
                if confirm is not None:
                    _fail(confirm, error)

    def _arm_abort(self, error: BrokerUnavailable) -> None:
        """Fail the waits if the connection is not back within ``connect_timeout``."""
        for confirm in self._confirms.values():
            _fail(confirm, _fresh(error))
        self._confirms.clear()
        if self._abort_timer is None:
            self._abort_timer = asyncio.get_running_loop().call_later(
                self.connect_timeout, self._abort_waits, error)

    def _abort_waits(self, error: BrokerUnavailable) -> None:
        self._abort_timer = None
        if self._outage is None:
            return
        for task_id in list(self._channels.values()):
            self.registry.fail(task_id, _fresh(error))
        self._channels.clear()

    async def _drop_connection(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        client, self._client = self._client, None
        self._confirmed.clear()
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), 1.0)
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(close_connection_pool=True), 1.0)

    def _unavailable(self, exc: BaseException) -> BrokerUnavailable:
        if isinstance(exc, BrokerUnavailable):
            return exc
        log.debug("result backend error", exc_info=exc)
        return BrokerUnavailable(f"result backend {self.backend_name} unavailable "
                                 f"({type(exc).__name__}); reconnecting",
                                 service="result backend")


def _ssl_options(app: Celery) -> dict[str, Any]:
    options = app.conf.redis_backend_use_ssl
    return dict(options) if isinstance(options, dict) else {}


def _fresh(error: BrokerUnavailable) -> BrokerUnavailable:
    """A new exception like ``error``, for each caller: raising one shared instance again
    and again chains every raiser's frames onto its traceback, and the outage (which holds
    it) would keep every refused request and aborted wait alive until the backend is back."""
    return BrokerUnavailable(str(error), retry_after=error.retry_after,
                             service=error.service)


def _fail(fut: asyncio.Future[Any], error: BaseException) -> None:
    if not fut.done():
        fut.set_exception(error)
        fut.exception()
