"""The glue to Celery's ``app.amqp``: task messages, routing and queue declarations.

Celery builds every message (protocol 2) and picks every destination, so what we publish is
byte-for-byte what ``Task.apply_async`` would publish, and any stock Celery 5 worker runs it.
This module does no I/O.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping, Sequence
from copy import copy
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from celery import Celery
from celery.app.routes import MapRoute
from celery.events.event import Event, event_exchange
from celery.utils.nodenames import anon_nodename
from celery.utils.time import maybe_make_aware, utcoffset
from kombu import Exchange, Queue
from kombu.compression import compress
from kombu.serialization import dumps
from kombu.transport.base import to_rabbitmq_queue_arguments
from kombu.utils.uuid import uuid

from .errors import ConfigurationError

#: Options of ``Task.apply_async`` that the producer honours. Anything else raises TypeError.
SUPPORTED_OPTIONS = frozenset({
    "countdown", "eta", "expires", "priority", "queue", "exchange", "exchange_type",
    "routing_key", "headers", "task_id", "time_limit", "soft_time_limit", "ignore_result",
    "link", "link_error", "serializer", "compression", "shadow", "delivery_mode",
    "root_id", "parent_id", "group_id", "group_index", "retries", "argsrepr", "kwargsrepr",
})

#: Celery options that only make sense for a blocking publisher; refused with a reason.
_REFUSED_OPTIONS = {
    "retry": "this producer never retries silently; catch BrokerUnavailable instead",
    "retry_policy": "this producer never retries silently; catch BrokerUnavailable instead",
    "connection": "the producer owns its connection",
    "producer": "the producer owns its connection",
    "reply_to": "replies always go to the producer's own reply queue",
}

_DELIVERY_MODES = {"persistent": 2, "transient": 1}


def check_options(options: Mapping[str, Any]) -> None:
    """Raise TypeError for any option the producer would otherwise silently drop."""
    for key in options:
        if key in SUPPORTED_OPTIONS:
            continue
        reason = _REFUSED_OPTIONS.get(key, "not an apply_async option this producer supports")
        raise TypeError(f"unsupported task option {key!r}: {reason}")


@dataclass(frozen=True, slots=True)
class QueueDeclaration:
    """Everything needed to declare one queue exactly as a stock Celery worker does."""

    name: str
    durable: bool
    exclusive: bool
    auto_delete: bool
    arguments: dict[str, Any]
    exchanges: tuple[tuple[str, str, bool, bool, dict[str, Any]], ...]
    bindings: tuple[tuple[str, str, dict[str, Any]], ...]


def exchange_declaration(exchange: Exchange) -> QueueDeclaration:
    """A declaration of ``exchange`` alone (no queue: the name is empty), as kombu declares
    it before publishing to it."""
    return QueueDeclaration(
        name="", durable=bool(exchange.durable), exclusive=False, auto_delete=False,
        arguments={}, bindings=(),
        exchanges=(_exchange_arguments(exchange),))


def _exchange_arguments(exchange: Exchange) -> tuple[str, str, bool, bool, dict[str, Any]]:
    return (exchange.name, exchange.type, bool(exchange.durable), bool(exchange.auto_delete),
            dict(exchange.arguments or {}))


def queue_declaration(queue: Queue) -> QueueDeclaration:
    """Translate a kombu Queue (from ``app.amqp.queues``) into declaration arguments."""
    exchanges: list[tuple[str, str, bool, bool, dict[str, Any]]] = []
    bindings: list[tuple[str, str, dict[str, Any]]] = []

    def add_exchange(exchange: Exchange) -> None:
        if exchange is not None and exchange.name:
            exchanges.append(_exchange_arguments(exchange))

    add_exchange(queue.exchange)
    if queue.exchange is not None and queue.exchange.name:
        bindings.append((queue.exchange.name, queue.routing_key or "",
                         dict(queue.binding_arguments or {})))
    for binding in queue.bindings or ():
        add_exchange(binding.exchange)
        bindings.append((binding.exchange.name, binding.routing_key or "",
                         dict(binding.arguments or {})))
    arguments = to_rabbitmq_queue_arguments(
        dict(queue.queue_arguments or {}),
        expires=queue.expires, message_ttl=queue.message_ttl, max_length=queue.max_length,
        max_length_bytes=queue.max_length_bytes, max_priority=queue.max_priority,
    )
    return QueueDeclaration(
        name=queue.name, durable=bool(queue.durable), exclusive=bool(queue.exclusive),
        auto_delete=bool(queue.auto_delete), arguments=arguments,
        exchanges=tuple(exchanges), bindings=tuple(bindings),
    )


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """A serialized protocol-2 task message and where it goes."""

    #: Unroutable task messages come back as errors: a task must never vanish silently.
    mandatory: ClassVar[bool] = True

    task_id: str
    name: str
    exchange: str
    routing_key: str
    body: bytes
    properties: dict[str, Any]
    headers: dict[str, Any]
    declare: Queue | None
    #: ``(args, kwargs, embed)``: the body before serialization, for the publish signals.
    payload: tuple[Any, ...] = ()
    #: Celery's ``task-sent`` event fields, when ``task_send_sent_event`` is on.
    sent_event: dict[str, Any] | None = None

    @property
    def what(self) -> str:
        return f"task {self.task_id}"


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """A broadcast on Celery's control exchange, exactly as kombu's ``Mailbox`` sends it
    (``celery control revoke`` and friends). Workers that are not running miss it."""

    #: A fanout with no worker bound is not an error: there is nobody to tell.
    mandatory: ClassVar[bool] = False

    task_id: str
    method: str
    exchange: str
    routing_key: str
    body: bytes
    properties: dict[str, Any]
    headers: dict[str, Any]
    declaration: QueueDeclaration

    @property
    def what(self) -> str:
        return f"{self.method} of task {self.task_id}"


def build_sent_event(app: Celery, message: TaskMessage) -> ControlMessage:
    """The ``task-sent`` event Celery publishes after a task when ``task_send_sent_event`` is
    on (``EventDispatcher.publish``): on the ``celeryev`` topic exchange, key ``task.sent``."""
    hostname = message.headers.get("origin") or anon_nodename()
    exchange = copy(event_exchange)
    exchange.name = app.conf.event_exchange
    queue = message.declare
    event = Event("task-sent", hostname=hostname, utcoffset=utcoffset(), pid=os.getpid(),
                  clock=app.clock.forward(), **(message.sent_event or {}),
                  queue=queue.name if queue is not None else None,
                  exchange=message.exchange, routing_key=message.routing_key)
    content_type, content_encoding, payload = dumps(event,
                                                    serializer=app.conf.event_serializer)
    return ControlMessage(
        task_id=message.task_id, method="task-sent", exchange=exchange.name,
        routing_key="task.sent",
        body=payload.encode(content_encoding) if isinstance(payload, str) else payload,
        properties={"content_type": content_type, "content_encoding": content_encoding,
                    "delivery_mode": 1},
        headers={"hostname": hostname}, declaration=exchange_declaration(exchange),
    )


def build_revoke(app: Celery, task_ids: Sequence[str], *, terminate: bool = False,
                 signal: str = "SIGTERM") -> ControlMessage:
    """The ``revoke`` broadcast ``app.control.revoke(task_ids, terminate, signal)`` sends."""
    mailbox = app.control.mailbox
    exchange = mailbox.exchange
    ids = list(task_ids)
    message = {"method": "revoke",
               "arguments": {"task_id": ids[0] if len(ids) == 1 else ids,
                             "terminate": terminate, "signal": signal},
               "destination": None, "pattern": None, "matcher": None}
    content_type, content_encoding, payload = dumps(message, serializer=mailbox.serializer)
    body = payload.encode(content_encoding) if isinstance(payload, str) else payload
    return ControlMessage(
        task_id=", ".join(ids), method="revoke", exchange=exchange.name, routing_key="",
        body=body,
        properties={"content_type": content_type, "content_encoding": content_encoding,
                    "delivery_mode": _DELIVERY_MODES.get(exchange.delivery_mode,
                                                         exchange.delivery_mode) or 1},
        headers={"clock": mailbox.clock.forward(), "expires": 0},
        declaration=exchange_declaration(exchange),
    )


_ROUTING_OPTIONS = frozenset({"queue", "exchange", "routing_key", "exchange_type", "priority"})


class MessageBuilder:
    """Builds messages for one app, caching what does not change per message.

    The app's serializer, compression and delivery mode are read once; routes are cached per
    task name when every router is a plain name map (``task_routes`` dicts and patterns);
    short ``argsrepr``/``kwargsrepr`` use ``repr`` instead of the much slower ``saferepr``.
    Celery's ``app.amqp`` still builds and routes every message.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.amqp = app.amqp
        conf = app.conf
        self.serializer: str = conf.task_serializer
        self.compression: str | None = conf.task_compression
        self.delivery_mode: Any = conf.task_default_delivery_mode
        self.default_exchange: str = conf.task_default_exchange
        self.default_routing_key: str = conf.task_default_routing_key
        self.repr_maxsize = min(self.amqp.argsrepr_maxsize, self.amqp.kwargsrepr_maxsize)
        self.origin = anon_nodename()
        self.pid = os.getpid()
        self.send_sent_event = bool(conf.task_send_sent_event)
        self._routes: dict[str, dict[str, Any]] | None = (
            {} if all(isinstance(r, MapRoute) for r in self.amqp.routes) else None)

    def _repr(self, value: Any) -> str | None:
        text = repr(value)
        return text if len(text) <= self.repr_maxsize else None  # None: saferepr truncates

    def _route(self, opts: dict[str, Any], name: str, args: tuple[Any, ...],
               kwargs: dict[str, Any], task_type: Any) -> dict[str, Any]:
        cache = self._routes
        if cache is None or not _ROUTING_OPTIONS.isdisjoint(opts):
            return dict(self.amqp.router.route(opts, name, args, kwargs, task_type))
        route = cache.get(name)
        if route is None:
            route = cache[name] = self.amqp.router.route({}, name, args, kwargs, task_type)
        return {**route, **opts}

    def _delivery_mode(self, explicit: Any, queue: Queue | None) -> int:
        mode = explicit
        if mode is None and queue is not None and queue.exchange is not None:
            mode = queue.exchange.delivery_mode
        if mode is None:
            mode = self.delivery_mode
        mode = _DELIVERY_MODES.get(mode, mode)
        if mode not in (1, 2):
            raise ConfigurationError(f"delivery_mode must be 1, 2, 'transient' or "
                                     f"'persistent', not {mode!r}")
        return int(mode)

    def _expiration_seconds(self, expires: Any) -> float:
        if isinstance(expires, datetime):
            delta = maybe_make_aware(expires) - self.app.now()
        elif isinstance(expires, str):
            delta = datetime.fromisoformat(expires) - self.app.now()
        else:
            return max(float(expires), 0.0)
        return max(float(delta.total_seconds()), 0.0)

    def build(self, name: str, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
              options: Mapping[str, Any], reply_to: str, task_type: Any = None) -> TaskMessage:
        """Build, route and serialize one task message with ``app.amqp``.

        ``options`` are ``apply_async`` options (already checked); a registered task's own
        execution options (its queue, serializer, ...) apply first, as in Celery.
        """
        opts: dict[str, Any] = {}
        if task_type is not None and hasattr(task_type, "_get_exec_options"):
            opts.update((k, v) for k, v in task_type._get_exec_options().items()
                        if v is not None)
        opts.update(options)
        args = tuple(args or ())
        kwargs = dict(kwargs or {})

        task_id = opts.pop("task_id", None) or uuid()
        expires = opts.pop("expires", None)
        extra_headers = opts.pop("headers", None)
        serializer = opts.pop("serializer", None) or self.serializer
        compression = opts.pop("compression", None) or self.compression
        delivery_mode = opts.pop("delivery_mode", None)
        argsrepr = opts.pop("argsrepr", None)
        kwargsrepr = opts.pop("kwargsrepr", None)
        headers, properties, body, sent_event = self.amqp.create_task_message(
            task_id, name, args, kwargs, opts.pop("countdown", None), opts.pop("eta", None),
            opts.pop("group_id", None), opts.pop("group_index", None), expires,
            opts.pop("retries", 0), None,
            _as_list(opts.pop("link", None)), _as_list(opts.pop("link_error", None)), reply_to,
            opts.pop("time_limit", None), opts.pop("soft_time_limit", None),
            self.send_sent_event, opts.pop("root_id", None), opts.pop("parent_id", None),
            opts.pop("shadow", None), None, origin=self.origin,
            # as Celery: the task's own setting, or None (the worker decides) for a name
            ignore_result=opts.pop("ignore_result", getattr(task_type, "ignore_result", None)),
            argsrepr=self._repr(args) if argsrepr is None else argsrepr,
            kwargsrepr=self._repr(kwargs) if kwargsrepr is None else kwargsrepr,
        )
        if extra_headers:
            headers.update(extra_headers)

        route = self._route(opts, name, args, kwargs, task_type)
        queue: Queue | None = route.pop("queue", None)
        exchange = route.pop("exchange", None)
        routing_key = route.pop("routing_key", None)
        exchange_type = route.pop("exchange_type", None)
        if isinstance(exchange, Exchange):
            exchange_type = exchange_type or exchange.type
            exchange = exchange.name
        if queue is None and exchange is None:
            queue = self.amqp.default_queue
        if exchange_type is None:
            exchange_type = (queue.exchange.type if queue is not None and queue.exchange
                             else "direct")
        qname = queue.name if queue is not None else None
        # Celery's rule: a direct exchange with a missing half goes through the default one.
        if (not exchange or not routing_key) and exchange_type == "direct":
            exchange, routing_key = "", qname
        elif exchange is None:
            exchange = (queue.exchange.name if queue is not None and queue.exchange else "") \
                or self.default_exchange
            routing_key = routing_key or (queue.routing_key if queue is not None else None) \
                or self.default_routing_key
        if not routing_key and not exchange:
            raise ConfigurationError(f"task {name!r} routes nowhere: no queue, exchange or key")

        properties["delivery_mode"] = self._delivery_mode(delivery_mode, queue)
        priority = route.pop("priority", None)
        if priority is not None:
            properties["priority"] = int(priority)
        if expires is not None:
            properties["expiration"] = str(int(self._expiration_seconds(expires) * 1000))
        content_type, content_encoding, payload = dumps(body, serializer=serializer)
        data = payload.encode(content_encoding) if isinstance(payload, str) else payload
        if compression:
            data, headers["compression"] = compress(data, compression)
        properties["content_type"] = content_type
        properties["content_encoding"] = content_encoding
        return TaskMessage(
            task_id=task_id, name=name, exchange=exchange, routing_key=routing_key or "",
            body=data, properties=properties, headers=headers, declare=queue, payload=body,
            sent_event=sent_event,
        )


_builders: weakref.WeakKeyDictionary[Celery, MessageBuilder] = weakref.WeakKeyDictionary()


def message_builder(app: Celery) -> MessageBuilder:
    """The app's builder, made on first use (configure the app before publishing)."""
    builder = _builders.get(app)
    if builder is None or builder.pid != os.getpid():  # a forked child: its own origin
        builder = _builders[app] = MessageBuilder(app)
    return builder


def build_message(
    app: Celery,
    name: str,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    options: Mapping[str, Any],
    reply_to: str,
    task_type: Any = None,
) -> TaskMessage:
    """Build, route and serialize one task message for ``app`` (see MessageBuilder.build)."""
    return message_builder(app).build(name, args, kwargs, options, reply_to, task_type)


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]
