"""``rpc://``: states arrive on this process's own AMQP reply queue.

The worker's rpc backend publishes every state of a task (STARTED, RETRY, PROGRESS, ..., then
SUCCESS / FAILURE / REVOKED) to the task's ``reply_to`` with ``correlation_id`` = task id, and
keeps nothing. So only this process can know these tasks, and only while it listens: a
bounded :class:`StatusStore` keeps the latest state of the tasks it is asked to record (those
sent by routes of an app that mounts status routes), for ``status_ttl`` seconds, at most
``status_max`` of them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from celery import Celery
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.serialization import loads, prepare_accept_content, registry
from kombu.utils import json as kombu_json
from kombu.utils.uuid import uuid

from ..errors import BrokerUnavailable, ConfigurationError, ResultDecodeError, UnknownTask
from ..messages import QueueDeclaration
from ..results import READY_STATES, ResultRegistry, TaskResult
from ..transports.amqp import AmqpTransport
from . import ResultSource

if TYPE_CHECKING:
    from ..transports import Transport

log = logging.getLogger(__name__)

_JSON = "application/json"
NO_GROUPS = ("groups need a result backend that keeps them, and rpc:// keeps nothing: use "
             "redis://, rediss://, or a database backend (db+..., django-db)")
#: kombu's JSON decoding (its ``object_hook`` revives datetimes, UUIDs, ...), built once:
#: ``kombu.utils.json.loads`` builds a new decoder for every message.
_JSON_DECODER = json.JSONDecoder(object_hook=kombu_json.object_hook)


class StatusStore:
    """The latest meta of recorded tasks: at most ``limit`` of them, each for ``ttl`` seconds
    after its last state; the oldest go first."""

    def __init__(self, ttl: float, limit: int) -> None:
        self.ttl = ttl
        self.limit = limit
        self._metas: OrderedDict[str, tuple[float, dict[str, Any] | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._metas)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._metas

    def record(self, task_id: str) -> None:
        self._put(task_id, None)

    def update(self, task_id: str, meta: dict[str, Any]) -> None:
        if task_id in self._metas:
            self._put(task_id, meta)

    def get(self, task_id: str) -> tuple[bool, dict[str, Any] | None]:
        """``(known, meta)``: meta is None for a recorded task with no state yet."""
        entry = self._metas.get(task_id)
        if entry is None:
            return False, None
        if entry[0] < time.monotonic():
            del self._metas[task_id]
            return False, None
        return True, entry[1]

    def _put(self, task_id: str, meta: dict[str, Any] | None) -> None:
        metas = self._metas
        metas[task_id] = (time.monotonic() + self.ttl, meta)
        metas.move_to_end(task_id)
        now = time.monotonic()
        while metas and (len(metas) > self.limit or next(iter(metas.values()))[0] < now):
            metas.popitem(last=False)


class RpcSource(ResultSource):
    """Consumes the process's reply queue: a named durable queue with ``x-expires``, consumed
    again after every reconnect, so results in flight survive a short drop."""

    kind = "rpc"
    persistent = False
    watches = False

    def __init__(self, app: Celery, registry: ResultRegistry, transport: Transport, *,
                 reply_queue_expires: float = 300.0, status_ttl: float = 3600.0,
                 status_max: int = 100_000, **_: Any) -> None:
        super().__init__(app, registry)
        if not isinstance(transport, AmqpTransport):
            raise ConfigurationError("result backend 'rpc://' needs an AMQP broker: use "
                                     "redis:// or another persistent result backend")
        self.transport = transport
        conf = app.conf
        self.accept = prepare_accept_content(list(conf.result_accept_content
                                                  or conf.accept_content))
        # The fast path is only taken where it decodes exactly as kombu would.
        self._fast_json = _JSON in self.accept and registry_loads() is kombu_json.loads
        self.store = StatusStore(status_ttl, status_max)
        self.reply_queue = QueueDeclaration(
            name=f"tcelery.reply.{socket.gethostname()}.{os.getpid()}.{uuid()[:8]}",
            durable=True, exclusive=False, auto_delete=False,
            arguments={"x-expires": int(reply_queue_expires * 1000)},
            exchanges=(), bindings=(),
        )
        self.reply_to = self.reply_queue.name
        transport.consume(self.reply_queue, self.on_reply)
        transport.on_node_change(self._node_changed)

    def _node_changed(self, old: int, new: int) -> None:
        # The workers of the old node publish there the results of the tasks sent there: the
        # waits in flight cannot end here any more. Fail them now (503) rather than at their
        # timeout; the reply queue is declared anew on the new node.
        if len(self.registry):
            log.warning("broker node changed: failing %d wait(s) whose results go to the "
                        "previous node", len(self.registry))
        self.registry.abort_all(BrokerUnavailable(
            "the producer moved to another broker node; the results of the tasks sent "
            "before go to the previous one", retry_after=1.0))

    async def watch(self, result: TaskResult) -> None:
        """Nothing to do: the reply queue is consumed before any task is sent."""

    async def lookup(self, result: TaskResult) -> None:
        known, meta = self.store.get(result.task_id)
        if not known:
            raise UnknownTask(result.task_id, "with the rpc:// result backend only the tasks "
                                              "this process sent are known")
        if meta is not None:
            self.registry.feed(result.task_id, meta)

    def record(self, task_id: str) -> None:
        self.store.record(task_id)

    async def save_group(self, group_id: str, task_ids: Sequence[str]) -> None:
        raise ConfigurationError(NO_GROUPS)

    async def restore_group(self, group_id: str) -> list[str] | None:
        raise ConfigurationError(NO_GROUPS)

    def on_reply(self, correlation_id: str | None, content_type: str | None,
                 content_encoding: str | None, body: bytes) -> None:
        """Decode one reply and hand it on; replies nobody waits for or records are dropped."""
        if correlation_id is None:
            return
        recorded = correlation_id in self.store
        if not recorded and correlation_id not in self.registry:
            return  # late or foreign: the waiter is gone
        try:
            meta = self._decode(body, content_type, content_encoding)
        except (ContentDisallowed, DecodeError) as exc:
            if not isinstance(exc, ContentDisallowed):
                log.warning("undecodable reply for %s: %s", correlation_id, exc)
            self.registry.fail(correlation_id,
                               ResultDecodeError(correlation_id, content_type or "(none)"))
            return
        if not isinstance(meta, dict):
            return
        if meta.get("date_done") is None and meta.get("status") in READY_STATES:
            # Celery < 5.7's rpc:// reply has no date_done: its arrival is the best we know
            meta["date_done"] = datetime.now(timezone.utc).isoformat()
        if recorded:
            known, stored = self.store.get(correlation_id)
            if not (known and stored and stored.get("status") in READY_STATES):
                self.store.update(correlation_id, meta)
        self.registry.feed(correlation_id, meta)

    def _decode(self, body: bytes, content_type: str | None,
                content_encoding: str | None) -> Any:
        if self._fast_json and content_type == _JSON and content_encoding in ("utf-8", None):
            try:
                return _JSON_DECODER.decode(body.decode())
            except ValueError as exc:  # UnicodeDecodeError included
                raise DecodeError(exc) from exc
        return loads(body, content_type, content_encoding or "utf-8", accept=self.accept)

    @property
    def consuming(self) -> bool:
        """True while the reply queue is consumed: the transport hands out a connection only
        once its consumers are restored, and the consume channel is open."""
        conn = self.transport.connection
        return conn is not None and conn.is_open and conn.consume_channel.is_open

    @property
    def healthy(self) -> bool:
        return self.consuming

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "reply_queue": self.reply_queue.name,
                "recorded": len(self.store)}


def registry_loads() -> Any:
    """kombu's registered JSON decoder (the fast path is valid only while it is kombu's)."""
    return registry._decoders.get(_JSON)
