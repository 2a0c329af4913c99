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
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

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

    def __init__(self, app: Celery, registry: ResultRegistry) -> None:
        self.app = app
        self.registry = registry

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

    @property
    def healthy(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        """What the source reads, for health reports (no secrets)."""
        return {"kind": self.kind, "backend": self.backend_name, "healthy": self.healthy}

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads."""


def backend_scheme(app: Celery) -> str:
    """The scheme of ``app.conf.result_backend`` (``"rpc"``, ``"redis"``, ``"db+sqlite"``,
    ``"django-db"``, ...), or ``""`` when the app keeps no results."""
    backend = app.conf.result_backend
    if not backend or backend == "disabled":
        return ""
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
