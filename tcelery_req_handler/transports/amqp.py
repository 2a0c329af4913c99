"""The AMQP transport: pika on the asyncio loop, with publisher confirms.

:class:`AmqpTransport` keeps one :class:`BrokerConnection` open: it connects, restores its
consumers (the ``rpc://`` reply queue), waits for the connection to die, backs off and
reconnects. While the broker is unreachable it never hangs: a publish fails fast with
``BrokerUnavailable`` (or, before the first connection, within ``connect_timeout``).

A :class:`BrokerConnection` owns three channels, each with one job, so that a broker error on
one cannot hurt the others:

* ``declare``: queue and exchange declarations (a PRECONDITION_FAILED closes only this one);
* ``publish``: confirm mode; every publish returns a future that the broker's ack resolves;
* ``consume``: the producer's reply queue, acknowledged in batches once per loop turn.

A connection never reconnects by itself: when it dies it fails everything in flight and tells
its owner (the :class:`AmqpTransport`), which decides what next.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import socket
import ssl
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pika
from kombu.utils.functional import shufflecycle
from kombu.utils.url import parse_url
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.spec import Basic, BasicProperties

from .. import metrics
from .._aio import wait_bounded, wait_owned
from ..errors import BrokerUnavailable, ConfigurationError, PublishError, TCeleryError
from ..messages import ControlMessage, QueueDeclaration, TaskMessage, queue_declaration
from . import Transport, _pika_floats  # noqa: F401 - floats in headers

log = logging.getLogger(__name__)

#: ``on_message(correlation_id, content_type, content_encoding, body)``
ReplyCallback = Callable[[str | None, str | None, str | None, bytes], None]


class _Channel:
    """A pika channel whose RPCs are awaitable, and fail instead of hanging when it closes."""

    def __init__(self, connection: BrokerConnection, name: str) -> None:
        self.connection = connection
        self.name = name
        self.channel: Any = None
        self._rpcs: set[asyncio.Future[Any]] = set()

    async def open(self) -> None:
        opened: asyncio.Future[Any] = self.connection.loop.create_future()
        self._track(opened)
        self.connection.pika.channel(on_open_callback=_resolver(opened))
        self.channel = await opened
        self.channel.add_on_close_callback(self._on_close)
        await self.setup()

    async def setup(self) -> None:
        """Hook for channel-level setup (confirm mode, qos) after each open."""

    @property
    def is_open(self) -> bool:
        return self.channel is not None and bool(self.channel.is_open)

    def rpc(self, method: str, **kwargs: Any) -> asyncio.Future[Any]:
        """Call a pika channel method that takes ``callback=``; the future gets its reply frame."""
        fut: asyncio.Future[Any] = self.connection.loop.create_future()
        if not self.is_open:
            fut.set_exception(self._closed_error("channel is not open"))
            return fut
        self._track(fut)
        getattr(self.channel, method)(callback=_resolver(fut), **kwargs)
        return fut

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._rpcs.add(fut)
        fut.add_done_callback(self._rpcs.discard)

    def _closed_error(self, reason: object) -> Exception:
        if not self.connection.is_open:
            return BrokerUnavailable(f"connection to the broker lost: {reason}")
        return PublishError(f"{self.name} channel closed by the broker: {reason}")

    def _on_close(self, _channel: Any, reason: BaseException) -> None:
        error = self._closed_error(reason)
        for fut in list(self._rpcs):
            _fail(fut, error)
        self.on_closed(error)
        if self.connection.is_open and not self.connection.closing:
            log.warning("%s channel closed (%s); reopening", self.name, reason)
            self.connection.spawn(self.open())

    def on_closed(self, error: Exception) -> None:
        """Hook: fail whatever else depends on this channel."""


class _PublishChannel(_Channel):
    """Confirm-mode channel: each publish resolves when the broker acks (or fails on nack)."""

    def __init__(self, connection: BrokerConnection) -> None:
        super().__init__(connection, "publish")
        self._next_tag = 0
        self._unconfirmed: dict[int, tuple[asyncio.Future[None], str]] = {}
        self._order: deque[int] = deque()
        self._returned: dict[str, str] = {}

    async def setup(self) -> None:
        self._next_tag = 0
        self.channel.add_on_return_callback(self._on_return)
        selected: asyncio.Future[Any] = self.connection.loop.create_future()
        self._track(selected)
        self.channel.confirm_delivery(self._on_confirm, callback=_resolver(selected))
        await selected

    def publish(self, message: TaskMessage | ControlMessage) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.connection.loop.create_future()
        if not self.is_open:
            fut.set_exception(self._closed_error("channel is not open"))
            return fut
        props = BasicProperties(headers=message.headers, **message.properties)
        self.channel.basic_publish(message.exchange, message.routing_key, message.body,
                                   props, mandatory=message.mandatory)
        self._next_tag += 1
        self._unconfirmed[self._next_tag] = (fut, message.task_id)
        self._order.append(self._next_tag)
        return fut

    def _on_return(self, _ch: Any, method: Any, properties: Any, _body: bytes) -> None:
        if properties.correlation_id:
            self._returned[properties.correlation_id] = (
                f"{method.reply_text} (exchange {method.exchange!r}, "
                f"routing key {method.routing_key!r})")

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, Basic.Ack)
        if method.multiple:
            order, pending = self._order, self._unconfirmed
            while order and order[0] <= method.delivery_tag:
                entry = pending.pop(order.popleft(), None)
                if entry is not None:
                    self._settle(entry, ok)
        else:
            entry = self._unconfirmed.pop(method.delivery_tag, None)
            if entry is not None:
                self._settle(entry, ok)

    def _settle(self, entry: tuple[asyncio.Future[None], str], ok: bool) -> None:
        fut, task_id = entry
        if fut.done():
            return
        returned = self._returned.pop(task_id, None) if self._returned else None
        if returned is not None:
            _fail(fut, PublishError(f"message unroutable: {returned}", task_id=task_id))
        elif ok:
            fut.set_result(None)
        else:
            _fail(fut, PublishError("broker nacked the message", task_id=task_id))

    def on_closed(self, error: Exception) -> None:
        pending, self._unconfirmed = self._unconfirmed, {}
        self._order.clear()
        self._returned.clear()
        for fut, _task_id in pending.values():
            _fail(fut, error)


class _ConsumeChannel(_Channel):
    """Consumes the reply queue, acking in one batch per loop turn."""

    def __init__(self, connection: BrokerConnection, prefetch: int) -> None:
        super().__init__(connection, "consume")
        self.prefetch = prefetch
        self._queue: tuple[QueueDeclaration, ReplyCallback] | None = None
        self._last_tag = 0
        self._ack_scheduled = False

    async def setup(self) -> None:
        self._last_tag = 0
        await self.rpc("basic_qos", prefetch_count=self.prefetch)
        if self._queue is not None:
            await self._start(*self._queue)

    async def consume(self, queue: QueueDeclaration, on_message: ReplyCallback) -> None:
        self._queue = (queue, on_message)
        await self._start(queue, on_message)

    async def _start(self, queue: QueueDeclaration, on_message: ReplyCallback) -> None:
        await self.rpc("queue_declare", queue=queue.name, durable=queue.durable,
                       exclusive=queue.exclusive, auto_delete=queue.auto_delete,
                       arguments=queue.arguments)

        def deliver(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            self._last_tag = method.delivery_tag
            if not self._ack_scheduled:
                self._ack_scheduled = True
                self.connection.loop.call_soon(self._flush_acks)
            try:
                on_message(props.correlation_id, props.content_type, props.content_encoding, body)
            except Exception:  # a bad reply must never kill the consumer
                log.exception("reply handler failed for correlation id %s", props.correlation_id)

        consumed: asyncio.Future[Any] = self.connection.loop.create_future()
        self._track(consumed)
        self.channel.basic_consume(queue.name, deliver, auto_ack=False,
                                   callback=_resolver(consumed))
        self.channel.add_on_cancel_callback(self._on_cancelled)
        await consumed

    def _flush_acks(self) -> None:
        self._ack_scheduled = False
        if self.is_open and self._last_tag:
            self.channel.basic_ack(self._last_tag, multiple=True)

    def _on_cancelled(self, _frame: Any) -> None:
        # The broker dropped our consumer (e.g. the reply queue was deleted): start over.
        if self.connection.closing:
            return  # we deleted the reply queue ourselves, on close
        log.warning("reply consumer cancelled by the broker; reconnecting")
        self.connection.abort("reply consumer cancelled by the broker")


class _CoalescingConnection(AsyncioConnection):  # type: ignore[misc]
    """pika's asyncio connection, writing once per loop turn.

    pika hands its transport each frame separately (three per publish: method, header, body)
    and the transport makes one ``send()`` per write. Joining everything written during one
    loop turn into one write turns hundreds of syscalls into one under load; the order of
    frames is unchanged, and the delay is one loop iteration.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pending_output: list[bytes] = []
        super().__init__(*args, **kwargs)

    def _adapter_emit_data(self, data: bytes) -> None:
        self._pending_output.append(data)
        if len(self._pending_output) == 1:
            self.ioloop.call_soon(self._flush_output)

    def _flush_output(self) -> None:
        output, self._pending_output = self._pending_output, []
        if output and self._transport is not None:
            super()._adapter_emit_data(b"".join(output))


class BrokerConnection:
    """An open AMQP connection with its declare, publish and consume channels.

    Every wait on the broker is bounded: opening (``timeout``), declarations and publishes (by
    the caller), closing (``close(timeout)``, after which the socket is torn down regardless).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, prefetch: int,
                 on_lost: Callable[[BaseException], None]) -> None:
        self.loop = loop
        self.pika: Any = None
        self.closing = False
        self.blocked = False
        self._on_lost = on_lost
        self._opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._unblocked: asyncio.Future[None] = loop.create_future()
        self._declared: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._probing = False
        self.declare_channel = _Channel(self, "declare")
        self.publish_channel = _PublishChannel(self)
        self.consume_channel = _ConsumeChannel(self, prefetch)

    @classmethod
    async def open(cls, parameters: pika.ConnectionParameters, *, timeout: float,
                   prefetch: int, on_lost: Callable[[BaseException], None]) -> BrokerConnection:
        """Connect and open the channels; BrokerUnavailable within ``timeout`` in all.

        On any failure, timeout or cancellation the half-open connection is torn down before
        this returns, so nothing (socket, timer, callback) outlives the attempt.
        """
        loop = asyncio.get_running_loop()
        self = cls(loop, prefetch, on_lost)
        self.pika = _CoalescingConnection(
            parameters, on_open_callback=self._on_open, on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_close, custom_ioloop=loop)
        try:
            await asyncio.wait_for(self._open_channels(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            await self.close(timeout=1.0)
            raise BrokerUnavailable(f"could not reach the broker within {timeout:g}s") from None
        except BaseException:
            await asyncio.shield(self.close(timeout=1.0))
            raise
        return self

    async def _open_channels(self) -> None:
        await self._opened
        self.pika.add_on_connection_blocked_callback(self._on_blocked)
        self.pika.add_on_connection_unblocked_callback(self._on_unblocked)
        for channel in (self.declare_channel, self.publish_channel, self.consume_channel):
            await channel.open()

    @property
    def is_open(self) -> bool:
        return self.pika is not None and bool(self.pika.is_open) and not self.closing

    def spawn(self, coro: Any) -> None:
        """Run a background coroutine tied to this connection's life; if it fails, the
        connection is given up (the owner reconnects)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("channel reopen failed: %s", exc)
            self.abort(f"channel reopen failed: {exc}")

    # -- pika callbacks ------------------------------------------------------------------
    def _on_open(self, _conn: Any) -> None:
        if not self._opened.done():
            self._opened.set_result(None)

    def _on_open_error(self, _conn: Any, error: BaseException) -> None:
        _fail(self._opened, BrokerUnavailable(f"cannot connect to the broker: {error!r}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _on_close(self, _conn: Any, reason: BaseException) -> None:
        was_closing = self.closing
        self.closing = True
        error = BrokerUnavailable(f"connection to the broker lost: {reason!r}")
        _fail(self._opened, error)
        for channel in (self.declare_channel, self.publish_channel, self.consume_channel):
            channel._on_close(None, reason)
        for fut in self._declared.values():
            _fail(fut, error)
        _fail(self._unblocked, error)
        if metrics.METRICS is not None:
            metrics.METRICS.broker_unblocked(self)
        for task in list(self._tasks):
            task.cancel()
        if not self.closed.done():
            self.closed.set_result(None)
        if not was_closing:
            self._on_lost(reason)

    def _on_blocked(self, _conn: Any, frame: Any) -> None:
        log.warning("broker blocked publishing: %s", getattr(frame.method, "reason", ""))
        self.blocked = True
        if metrics.METRICS is not None:
            metrics.METRICS.broker_blocked(self)
        if self._unblocked.done():
            self._unblocked = self.loop.create_future()

    def _on_unblocked(self, _conn: Any, _frame: Any) -> None:
        log.info("broker unblocked publishing")
        self.blocked = False
        if metrics.METRICS is not None:
            metrics.METRICS.broker_unblocked(self)
        if not self._unblocked.done():
            self._unblocked.set_result(None)

    # -- operations ----------------------------------------------------------------------
    async def wait_unblocked(self, timeout: float) -> None:
        """Wait for the broker to lift a resource alarm; BrokerUnavailable after ``timeout``."""
        try:
            await wait_bounded(self._unblocked, timeout)
        except TimeoutError:
            raise BrokerUnavailable(f"broker has blocked publishing (resource alarm) for more "
                                    f"than {timeout:g}s", retry_after=5.0) from None

    def declared(self, queue: QueueDeclaration) -> asyncio.Future[None]:
        """A future that resolves once ``queue``, its exchanges and bindings are declared on
        this connection (a declaration without a queue name declares its exchanges only).
        Declared once per connection (a failed declaration is retried by the
        next caller); callers bound their own wait on it without cancelling it."""
        key = queue.name or f"exchange {queue.exchanges[0][0]}"
        done = self._declared.get(key)
        if done is None or (done.done() and done.exception() is not None):
            done = self._declared[key] = self.loop.create_future()
            task = self.loop.create_task(self._declare(queue, done))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return done

    async def _declare(self, queue: QueueDeclaration, done: asyncio.Future[None]) -> None:
        ch = self.declare_channel
        try:
            for name, kind, durable, auto_delete, arguments in queue.exchanges:
                await ch.rpc("exchange_declare", exchange=name, exchange_type=kind,
                             durable=durable, auto_delete=auto_delete, arguments=arguments)
            if queue.name:  # an empty name declares the exchanges only
                await ch.rpc("queue_declare", queue=queue.name, durable=queue.durable,
                             exclusive=queue.exclusive, auto_delete=queue.auto_delete,
                             arguments=queue.arguments)
            for exchange, key, arguments in queue.bindings:
                await ch.rpc("queue_bind", queue=queue.name, exchange=exchange,
                             routing_key=key, arguments=arguments)
        except asyncio.CancelledError:
            _fail(done, BrokerUnavailable("connection closed while declaring"))
            raise
        except Exception as exc:
            _fail(done, exc)
            return
        if not done.done():
            done.set_result(None)

    async def declare(self, queue: QueueDeclaration) -> None:
        """Declare a queue, its exchanges and bindings once per connection."""
        await self.declared(queue)

    def publish(self, message: TaskMessage | ControlMessage) -> asyncio.Future[None]:
        """Publish (``mandatory`` as the message says); resolves when the broker confirms."""
        return self.publish_channel.publish(message)

    async def consume(self, queue: QueueDeclaration, on_message: ReplyCallback) -> None:
        """Declare ``queue`` and consume it; restored automatically if the channel reopens."""
        await self.consume_channel.consume(queue, on_message)

    def check_alive(self, timeout: float) -> None:
        """Probe the broker with a cheap RPC; if it does not answer within ``timeout`` (and
        is not blocking us on purpose), tear the connection down so the owner reconnects.

        Called when a confirm is overdue: on a silent partition (no FIN, no RST) nothing else
        notices a dead peer before the heartbeat does, which takes minutes; meanwhile every
        publish would wait its full timeout.
        """
        if self._probing or not self.is_open:
            return
        self._probing = True
        task = self.loop.create_task(self._probe(timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(self, timeout: float) -> None:
        try:
            await wait_bounded(self.declare_channel.rpc(
                "exchange_declare", exchange="amq.direct", exchange_type="direct",
                durable=True, passive=True), timeout)
        except TimeoutError:
            if self.is_open and not self.blocked:
                log.warning("broker did not answer for %gs: dropping the connection", timeout)
                self.terminate(f"broker did not answer a probe within {timeout:g}s")
        except Exception:  # the channel or connection closed meanwhile: handled there
            pass
        finally:
            self._probing = False

    def abort(self, reason: str) -> None:
        """Start a clean close without waiting for it (used on failures)."""
        conn = self.pika
        if conn is None or conn.is_closing or conn.is_closed:
            return
        if not conn.is_open:
            # Still opening. pika's close() here trips an assertion in its connection workflow
            # mid-handshake (it reports the abort with an exception class, not an instance);
            # terminating the stream with a reason takes its ordinary failed-open path.
            self.terminate(reason)
            return
        try:
            conn.close(reply_text=reason)
        except Exception:  # a half-open connection may refuse a clean close
            log.debug("close during open failed", exc_info=True)

    def terminate(self, reason: str) -> None:
        """Drop the TCP connection now, without the AMQP close handshake (which a dead or
        frozen peer never answers). pika then reports the connection closed as usual."""
        if self.pika is not None and not self.pika.is_closed:
            # pika's own heartbeat checker ends a dead connection the same way
            self.pika._terminate_stream(BrokerUnavailable(reason))

    async def close(self, timeout: float = 5.0, *, delete_queue: str | None = None) -> None:
        """Close and wait until pika reports the connection closed, within ``timeout``.

        ``delete_queue`` (our reply queue) is deleted first, best effort. If the broker does
        not answer the close in time, the socket is dropped anyway: nothing is left behind.
        """
        was_closing, self.closing = self.closing, True
        deadline = self.loop.time() + timeout
        if delete_queue and not was_closing and self.declare_channel.is_open \
                and self.pika is not None and self.pika.is_open:
            try:
                await wait_bounded(self.declare_channel.rpc("queue_delete", queue=delete_queue),
                                   timeout / 4)
            except TimeoutError:  # the broker is not answering: no point in a handshake
                log.warning("broker did not answer for %gs; dropping the socket", timeout / 4)
                self.terminate("closed by client (no answer from the broker)")
            except Exception:
                pass
        self.abort("closed by client")
        if not self.closed.done():
            try:
                await wait_bounded(self.closed, max(deadline - self.loop.time(), 0.1))
            except TimeoutError:
                log.warning("broker did not answer the close within %gs; dropping the socket",
                            timeout)
                self.terminate("closed by client (no answer from the broker)")
                with contextlib.suppress(TimeoutError):
                    await wait_bounded(self.closed, 1.0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)


def _node_name(parameters: pika.ConnectionParameters) -> str:
    return f"{parameters.host}:{parameters.port}"


def _fail(fut: asyncio.Future[Any], error: BaseException) -> None:
    """Fail ``fut`` if still pending, and mark the exception retrieved: nobody may be waiting
    any more (the waiter gave up or was cancelled), and that must not log an error."""
    if not fut.done():
        fut.set_exception(error)
        fut.exception()


def _resolver(fut: asyncio.Future[Any]) -> Callable[[Any], None]:
    def resolve(value: Any) -> None:
        if not fut.done():
            fut.set_result(value)
    return resolve


_AMQP_SCHEMES = {"amqp": False, "pyamqp": False, "amqps": True, "pyamqps": True}

#: What ``broker_use_ssl`` may hold (py-amqp's ``ssl=`` keywords, as Celery passes them on).
SSL_KEYS = frozenset({"keyfile", "certfile", "ca_certs", "cert_reqs", "server_hostname",
                      "ciphers", "ssl_version", "tls_minimum_version", "tls_maximum_version"})

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
              "required": ssl.CERT_REQUIRED}

#: ``broker_use_ssl``: off, on with the default context, py-amqp's keywords, or a context.
SslSetting = bool | Mapping[str, Any] | ssl.SSLContext | None


def broker_urls(broker_url: str | Sequence[str]) -> list[str]:
    """Celery's failover broker URLs as a list: ``"amqp://a;amqp://b"``, or a list of URLs
    (each may itself hold ``;``). A bare ``host[:port]`` after the first URL takes the first
    URL's scheme, credentials and virtual host, as kombu's ``Connection.switch`` does."""
    pieces = [broker_url] if isinstance(broker_url, str) else list(broker_url)
    urls = [u.strip() for piece in pieces for u in str(piece).split(";") if u.strip()]
    if not urls:
        raise ConfigurationError(f"no broker URL in {broker_url!r}")
    first = urls[0]
    for i, url in enumerate(urls[1:], 1):
        if "://" not in url:
            scheme, rest = first.split("://", 1) if "://" in first else ("amqp", first)
            creds, _, hostpart = rest.rpartition("@")
            vhost = hostpart.split("/", 1)[1] if "/" in hostpart else "/"
            urls[i] = f"{scheme}://{creds + '@' if creds else ''}{url}/{vhost}"
    return urls


def ssl_options(use_ssl: SslSetting, host: str) -> pika.SSLOptions | None:
    """Celery's ``broker_use_ssl`` as pika's ``SSLOptions``; None when TLS is off.

    ``True`` (or an ``amqps://`` URL) is ``ssl.create_default_context()``: the system's CAs,
    the certificate and its host name both checked. A dict means what it means to py-amqp,
    the stock worker's client (``_wrap_socket_sni``): ``ca_certs`` (else the system's CAs),
    ``certfile``/``keyfile`` (a client certificate), ``cert_reqs`` (``ssl.CERT_*``,
    default ``CERT_REQUIRED``), ``server_hostname`` (SNI and the host name check; ``None``
    means the URL's host, as kombu sets it; absent, the host name is not checked),
    ``ciphers``, ``ssl_version``, ``tls_minimum_version``, ``tls_maximum_version``. An
    ``ssl.SSLContext`` is used as it is, with the URL's host as ``server_hostname``.
    """
    if use_ssl is None or use_ssl is False:
        return None
    if use_ssl is True:
        return pika.SSLOptions(ssl.create_default_context(), server_hostname=host)
    if isinstance(use_ssl, ssl.SSLContext):
        return pika.SSLOptions(use_ssl, server_hostname=host)
    if not isinstance(use_ssl, Mapping):
        raise ConfigurationError(f"broker_use_ssl must be True, False, a dict or an "
                                 f"ssl.SSLContext, not {use_ssl!r}")
    opts = dict(use_ssl)
    unknown = set(opts) - SSL_KEYS
    if unknown:
        raise ConfigurationError(f"broker_use_ssl: unsupported key(s) {sorted(unknown)}; "
                                 f"supported: {sorted(SSL_KEYS)}")
    server_hostname = opts.get("server_hostname")
    if "server_hostname" in opts and server_hostname is None:
        server_hostname = host
    cert_reqs = opts.get("cert_reqs")
    if isinstance(cert_reqs, str):
        key = cert_reqs.lower().removeprefix("cert_")
        if key not in _CERT_REQS:
            raise ConfigurationError(f"broker_use_ssl: cert_reqs {cert_reqs!r} is not one of "
                                     "ssl.CERT_NONE, ssl.CERT_OPTIONAL, ssl.CERT_REQUIRED")
        cert_reqs = _CERT_REQS[key]
    try:
        context = ssl.SSLContext(opts.get("ssl_version") or ssl.PROTOCOL_TLS_CLIENT)
        if opts.get("tls_minimum_version") is not None:
            context.minimum_version = opts["tls_minimum_version"]
        if opts.get("tls_maximum_version") is not None:
            context.maximum_version = opts["tls_maximum_version"]
        if opts.get("certfile"):
            context.load_cert_chain(opts["certfile"], opts.get("keyfile"))
        if opts.get("ca_certs"):
            context.load_verify_locations(opts["ca_certs"])
        if opts.get("ciphers"):
            context.set_ciphers(opts["ciphers"])
        # check_hostname first: verify_mode cannot become CERT_NONE while it is on
        context.check_hostname = server_hostname is not None
        if cert_reqs is not None:
            context.verify_mode = ssl.VerifyMode(cert_reqs)
        if not opts.get("ca_certs") and context.verify_mode != ssl.CERT_NONE:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise ConfigurationError(f"broker_use_ssl {opts!r}: cannot build the TLS context: "
                                 f"{exc}") from exc
    return pika.SSLOptions(context, server_hostname=server_hostname)


def connection_parameters(broker_url: str, *, heartbeat: float, connect_timeout: float,
                          use_ssl: SslSetting = None) -> pika.ConnectionParameters:
    """Turn a Celery broker URL (``amqp://``, ``pyamqp://``, ``amqps://``) into pika parameters
    (of its first node, if it names several: see :func:`broker_parameters`)."""
    url = broker_urls(broker_url)[0]
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _AMQP_SCHEMES:
        raise ConfigurationError(
            f"broker URL scheme {scheme or url!r} is not supported: tcelery_req_handler "
            "publishes over AMQP, use amqp://, pyamqp:// or amqps://")
    parts = parse_url(url)
    host = parts.get("hostname") or "localhost"
    if _AMQP_SCHEMES[scheme] and not use_ssl:  # amqps:// alone: the default context
        use_ssl = True
    tls = ssl_options(use_ssl, host)
    return pika.ConnectionParameters(
        host=host,
        port=int(parts.get("port") or (5671 if tls is not None else 5672)),
        virtual_host=parts.get("virtual_host") or "/",
        credentials=pika.PlainCredentials(parts.get("userid") or "guest",
                                          parts.get("password") or "guest"),
        heartbeat=int(heartbeat),
        connection_attempts=1,
        socket_timeout=connect_timeout,
        stack_timeout=connect_timeout,
        ssl_options=tls,
        client_properties={"connection_name": f"tcelery-req-handler {socket.gethostname()}"
                                              f":{os.getpid()}"},
    )


def broker_parameters(broker_url: str | Sequence[str], *, heartbeat: float,
                      connect_timeout: float,
                      use_ssl: SslSetting = None) -> list[pika.ConnectionParameters]:
    """pika parameters for every node of a (failover) broker URL, in order."""
    return [connection_parameters(url, heartbeat=heartbeat, connect_timeout=connect_timeout,
                                  use_ssl=use_ssl) for url in broker_urls(broker_url)]


#: ``broker_failover_strategy``: a name, or kombu's callable (the URLs in, an iterator of
#: them out).
FailoverStrategy = str | Callable[[list[str]], Iterator[str]] | None


def failover_cycle(strategy: FailoverStrategy, urls: Sequence[str]) -> Iterator[int]:
    """The indexes of the nodes to try next, as kombu picks them: ``round-robin`` (the
    default), ``shuffle``, or a callable; its first entry is skipped (the first node is the
    one used first), as kombu skips it."""
    items = list(urls)
    picks: Iterator[str]
    if strategy is None or strategy == "round-robin":
        picks = itertools.cycle(items)
    elif strategy == "shuffle":
        picks = shufflecycle(items)
    elif callable(strategy):
        picks = iter(strategy(items))
    else:
        raise ConfigurationError(f"broker_failover_strategy {strategy!r} is not one of "
                                 "'round-robin', 'shuffle' or a callable")
    where = {url: i for i, url in reversed(list(enumerate(items)))}

    def indexes() -> Iterator[int]:
        last = 0
        while True:
            url = next(picks, None)  # a strategy that runs dry falls back to round-robin
            last = where[url] if url in where else (last + 1) % len(items)
            yield last

    cycle = indexes()
    next(cycle)
    return cycle


class AmqpTransport(Transport):
    """Keeps one AMQP connection open and publishes over it with confirms.

    ``consume(queue, callback)`` registers a consumer (the ``rpc://`` reply queue) that is
    restored on every new connection before the connection is handed out, so results in
    flight survive a short drop.

    ``parameters`` may name several broker nodes (Celery's failover URLs): the first is used
    first; when a connection cannot be opened the next is tried at once, picked by
    ``failover_strategy`` (``round-robin``, ``shuffle`` or kombu's callable, which gets
    ``urls``); the backoff applies once every node has failed in a row. A lost connection
    is retried on its own node first (a short drop keeps the waits in flight), then on the
    next. Each new node gets the consumers' queues declared anew; the listeners registered
    with :meth:`on_node_change` hear of every move.
    """

    kind = "amqp"

    def __init__(self, parameters: pika.ConnectionParameters
                 | Sequence[pika.ConnectionParameters], *, connect_timeout: float,
                 reconnect_max_delay: float, prefetch: int, close_timeout: float,
                 failover_strategy: FailoverStrategy = None,
                 urls: Sequence[str] | None = None) -> None:
        self.nodes: list[pika.ConnectionParameters] = (
            [parameters] if isinstance(parameters, pika.ConnectionParameters)
            else list(parameters))
        if not self.nodes:
            raise ConfigurationError("no broker node to connect to")
        names = list(urls) if urls is not None else [_node_name(n) for n in self.nodes]
        if len(names) != len(self.nodes):
            raise ConfigurationError(f"{len(names)} URLs for {len(self.nodes)} broker nodes")
        self._node = 0
        self._cycle = failover_cycle(failover_strategy, names) if len(self.nodes) > 1 \
            else None
        self._node_listeners: list[Callable[[int, int], None]] = []
        self._served: int | None = None  # the node of the last connection handed out
        self.connect_timeout = connect_timeout
        self.reconnect_max_delay = reconnect_max_delay
        self.prefetch = prefetch
        self.close_timeout = close_timeout
        self._consumers: list[tuple[QueueDeclaration, ReplyCallback]] = []
        self._delete_on_close: list[str] = []
        self._declarations: dict[str, QueueDeclaration] = {}
        self._conn: BrokerConnection | None = None
        self._first: asyncio.Future[BrokerConnection] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._outage: BaseException | None = None
        self._closed = False
        self.reconnects = 0  # connections opened after a loss or failed attempts

    def __repr__(self) -> str:
        more = f" (+{len(self.nodes) - 1} failover)" if len(self.nodes) > 1 else ""
        return f"<AmqpTransport {_node_name(self.parameters)}{more}>"

    @property
    def parameters(self) -> pika.ConnectionParameters:
        """The parameters of the node in use (or tried next)."""
        return self.nodes[self._node]

    @property
    def node(self) -> int:
        """The index in :attr:`nodes` of the node in use (or tried next)."""
        return self._node

    def on_node_change(self, listener: Callable[[int, int], None]) -> None:
        """Call ``listener(old, new)`` (indexes in :attr:`nodes`) when a connection opens on
        another node than the last one did, before that connection is handed out."""
        self._node_listeners.append(listener)

    def _next_node(self) -> None:
        if self._cycle is not None:
            self._node = next(self._cycle)

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_open

    @property
    def connection(self) -> BrokerConnection | None:
        """The open connection, if any (for tests and health checks)."""
        return self._conn

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"kind": self.kind, "connected": self.connected,
                                     "host": _node_name(self.parameters)}
        if len(self.nodes) > 1:
            described["nodes"] = [_node_name(n) for n in self.nodes]
        described["reconnects"] = self.reconnects
        return described

    def consume(self, queue: QueueDeclaration, on_message: ReplyCallback, *,
                delete_on_close: bool = True) -> None:
        """Consume ``queue`` on every connection from now on (call before connecting)."""
        self._consumers.append((queue, on_message))
        if delete_on_close:
            self._delete_on_close.append(queue.name)

    async def connect(self) -> None:
        await self._connection()

    async def close(self) -> None:
        """Close the connection within ``close_timeout``; leaves no task, timer, socket, or
        consumer behind, and deletes the queues registered with ``delete_on_close``."""
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
            delete = self._delete_on_close[0] if self._delete_on_close else None
            await conn.close(self.close_timeout, delete_queue=delete)

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
        """Keep one connection open: connect, restore the consumers, wait for the connection
        to die, back off, reconnect (on the next node, if there are several and this one
        failed). Runs until ``close()`` cancels it."""
        attempt = 0
        count = len(self.nodes)
        while not self._closed:
            conn: BrokerConnection | None = None
            parameters = self.parameters
            try:
                conn = await BrokerConnection.open(
                    parameters, timeout=self.connect_timeout,
                    prefetch=self.prefetch, on_lost=self._on_lost)
                for queue, on_message in self._consumers:
                    await asyncio.wait_for(conn.consume(queue, on_message), self.connect_timeout)
            except asyncio.CancelledError:
                if conn is not None:
                    await asyncio.shield(conn.close(1.0))
                raise
            except Exception as exc:
                if conn is not None:  # connected, but a consumer failed: start over
                    await conn.close(1.0)
                error = exc if isinstance(exc, TCeleryError) else BrokerUnavailable(
                    f"cannot set up the broker connection: {exc!r}")
                if attempt < count:
                    log.warning("cannot connect to the broker at %s: %s",
                                _node_name(parameters), error)
                self._outage = error
                attempt += 1
                # the first caller waits for the whole first round over the nodes
                if attempt >= count and self._first is not None and not self._first.done():
                    self._first.set_exception(error)
                    self._first.exception()
                self._next_node()
                if attempt % count:  # another node left to try in this round: at once
                    continue
                delay = min(self.reconnect_max_delay, 0.05 * 2 ** min(attempt // count, 10))
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                continue
            if attempt:
                log.info("connected to the broker at %s after %d failed attempt(s)",
                         _node_name(parameters), attempt)
            attempt = 0
            if self._served is not None and self._served != self._node:
                log.warning("moved from broker node %s to %s", _node_name(
                    self.nodes[self._served]), _node_name(parameters))
                for listener in list(self._node_listeners):
                    try:
                        listener(self._served, self._node)
                    except Exception:
                        log.exception("node change listener failed")
            self._served = self._node
            self._conn, self._outage = conn, None
            if self._first is not None and not self._first.done():
                self._first.set_result(conn)
            else:  # connected before, or the first attempts failed: a reconnect
                self.reconnects += 1
                if metrics.METRICS is not None:
                    metrics.METRICS.reconnected("broker")
            await asyncio.shield(conn.closed)
            self._conn = None

    def _on_lost(self, reason: BaseException) -> None:
        if not self._closed:
            log.warning("connection to the broker lost (%r); reconnecting", reason)
            self._outage = BrokerUnavailable(f"connection lost: {reason!r}")

    async def publish(self, message: TaskMessage | ControlMessage, timeout: float) -> None:
        conn = await self._connection()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if conn.blocked:
            await conn.wait_unblocked(timeout)
        declaration = self._declaration(message)
        if declaration is not None:
            declared = conn.declared(declaration)
            if not declared.done():
                try:
                    await wait_bounded(declared, deadline - loop.time())
                except TimeoutError:
                    conn.check_alive(timeout)
                    raise BrokerUnavailable(
                        f"broker did not declare {declaration.name or 'its exchange'!r} "
                        f"within {timeout:g}s", retry_after=timeout) from None
            declared.result()
        if loop.time() >= deadline:  # never publish what the caller will be told failed
            raise BrokerUnavailable(
                f"no time left to publish {message.what} within {timeout:g}s (not sent)",
                retry_after=timeout)
        try:
            await wait_owned(conn.publish(message), deadline - loop.time())
        except TimeoutError:
            why = "publishing is blocked by a resource alarm" if conn.blocked else \
                "no confirm"
            conn.check_alive(timeout)
            raise BrokerUnavailable(
                f"broker did not confirm {message.what} within {timeout:g}s ({why})",
                retry_after=timeout) from None

    def _declaration(self, message: TaskMessage | ControlMessage) -> QueueDeclaration | None:
        if isinstance(message, ControlMessage):
            return message.declaration
        queue = message.declare
        if queue is None:
            return None
        declaration = self._declarations.get(queue.name)
        if declaration is None:
            declaration = self._declarations[queue.name] = queue_declaration(queue)
        return declaration
