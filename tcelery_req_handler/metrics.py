"""Prometheus metrics of the producer and the web side, off until something turns them on.

Nothing here imports ``prometheus_client`` until :func:`enable` runs (``tcelery_metrics_routes``
calls it), so the package never needs it, and while metrics are off every hook in the
library costs one ``if metrics.METRICS is not None`` check. Once on, :data:`METRICS` holds
the one :class:`Metrics` of the process, registered in the registry ``enable`` was given
(``prometheus_client.REGISTRY`` by default):

=========================================  =========  ======================================
name                                       type       meaning
=========================================  =========  ======================================
``tcelery_tasks_published_total``          counter    tasks sent, by ``task`` and ``outcome``:
                                                      ``confirmed``, ``refused``
                                                      (PublishError), ``unavailable``
                                                      (BrokerUnavailable), ``overloaded``
``tcelery_results_received_total``         counter    waited results by the first outcome:
                                                      ``state`` SUCCESS, FAILURE, REVOKED,
                                                      or TIMEOUT (a wait ran out first)
``tcelery_task_wait_seconds``              histogram  publish → ready state, of those results
``tcelery_results_awaited``                gauge      results awaited now (registry size)
``tcelery_event_streams_open``             gauge      Server-Sent Events streams open now
``tcelery_reconnects_total``               counter    by ``service``: ``broker``,
                                                      ``result_backend`` (Redis)
``tcelery_broker_blocked_seconds_total``   counter    time the broker held publishing
                                                      (``connection.blocked``)
=========================================  =========  ======================================

Multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before the process starts): every metric
works, except that ``tcelery_results_awaited`` cannot be computed when scraped
(``Gauge.set_function`` is not available there); each process then writes its count whenever
it publishes a task, a result arrives or a wait times out, and at each scrape it serves, and
the scrape shows the sum over the live processes (``multiprocess_mode="livesum"``). A process
whose abandoned waits were collected since its last such event reports its old count until its
next one.
"""

from __future__ import annotations

import os
import time
import weakref
from typing import TYPE_CHECKING, Any

from .errors import BrokerUnavailable, ConfigurationError, PublishError

if TYPE_CHECKING:
    from .messages import TaskMessage
    from .producer import Producer
    from .results import ResultRegistry, TaskResult

#: The process's metrics once :func:`enable` ran; None while they are off.
METRICS: Metrics | None = None

#: Every live ResultRegistry of the process (what ``tcelery_results_awaited`` adds up).
REGISTRIES: weakref.WeakSet[ResultRegistry] = weakref.WeakSet()

PREFIX = "tcelery"
#: Buckets of ``tcelery_task_wait_seconds``: waits run up to a route's timeout, and beyond.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0, float("inf"))
#: The ``state`` values of ``tcelery_results_received_total``.
RESULT_STATES = ("SUCCESS", "FAILURE", "REVOKED", "TIMEOUT")
#: The ``outcome`` values of ``tcelery_tasks_published_total``.
OUTCOMES = ("confirmed", "refused", "unavailable", "overloaded")
#: The ``service`` values of ``tcelery_reconnects_total``.
SERVICES = ("broker", "result_backend")

INSTALL_HINT = "pip install 'tcelery-req-handler[metrics]'"


def multiprocess_mode() -> bool:
    """True when prometheus_client runs in multiprocess mode (the variable is read by
    prometheus_client when it is first imported: set it before the process starts)."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ


def require_client() -> Any:
    """The ``prometheus_client`` module, or ConfigurationError saying how to install it."""
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError(f"metrics need prometheus_client: {INSTALL_HINT}") from None
    return prometheus_client


def enable(registry: Any = None) -> Metrics:
    """Turn the metrics on (idempotent) and return them. ``registry``: where to register
    them the first time (default ``prometheus_client.REGISTRY``)."""
    global METRICS
    if METRICS is None:
        METRICS = Metrics(registry)
    return METRICS


def awaited_now() -> int:
    """Results awaited in this process, over every producer's registry."""
    return sum(len(registry) for registry in list(REGISTRIES))


class Metrics:
    """The metrics themselves, and the hooks the library calls while they are on."""

    def __init__(self, registry: Any = None) -> None:
        client = require_client()
        if registry is None:
            registry = client.REGISTRY
        self.multiprocess = multiprocess_mode()
        self.tasks_published = client.Counter(
            f"{PREFIX}_tasks_published", "Tasks sent by this process, by task name and "
            "outcome: confirmed by the broker, refused by it (PublishError), broker "
            "unavailable (BrokerUnavailable), or not sent past max_pending (overloaded).",
            ["task", "outcome"], registry=registry)
        self.results_received = client.Counter(
            f"{PREFIX}_results_received", "Results of the tasks this process sent and waited "
            "for, by their first outcome: the ready state reached (SUCCESS, FAILURE, REVOKED) "
            "or TIMEOUT when a wait for it ran out first.", ["state"], registry=registry)
        self.task_wait = client.Histogram(
            f"{PREFIX}_task_wait_seconds", "Seconds from publishing a task to its ready "
            "state, for the results counted in tcelery_results_received_total (not the "
            "timeouts).", buckets=WAIT_BUCKETS, registry=registry)
        self.results_awaited = client.Gauge(
            f"{PREFIX}_results_awaited", "Results awaited now (the producers' registries).",
            registry=registry, multiprocess_mode="livesum")
        self.event_streams = client.Gauge(
            f"{PREFIX}_event_streams_open", "Server-Sent Events streams open now.",
            registry=registry, multiprocess_mode="livesum")
        self.reconnects = client.Counter(
            f"{PREFIX}_reconnects", "Connections opened again after a loss or failed "
            "attempts, by service: broker, result_backend.", ["service"], registry=registry)
        self.blocked_seconds = client.Counter(
            f"{PREFIX}_broker_blocked_seconds", "Seconds the broker blocked publishing "
            "(connection.blocked: a resource alarm), over every connection.",
            registry=registry)
        if not self.multiprocess:
            self.results_awaited.set_function(awaited_now)
        self._published: dict[tuple[str, str], Any] = {}
        self._states = {state: self.results_received.labels(state) for state in RESULT_STATES}
        self._reconnects = {name: self.reconnects.labels(name) for name in SERVICES}
        self._blocked_since: dict[int, float] = {}

    # -- publishing ---------------------------------------------------------------------------
    def published(self, task: str, outcome: str, count: int = 1) -> None:
        child = self._published.get((task, outcome))
        if child is None:
            child = self._published[task, outcome] = self.tasks_published.labels(task, outcome)
        child.inc(count)

    async def publish(self, producer: Producer, message: TaskMessage) -> None:
        """``producer.transport.publish(message)``, counted by outcome; starts the clock of
        the task's wait (before the publish: a result may arrive before its confirm)."""
        result = producer.results.get(message.task_id)
        if result is not None and result._sent_at is None:
            result._sent_at = time.perf_counter()
        try:
            await producer.transport.publish(message, producer.publish_timeout)
        except PublishError:
            self.published(message.name, "refused")
            raise
        except BrokerUnavailable:
            self.published(message.name, "unavailable")
            raise
        self.published(message.name, "confirmed")
        self.sync_awaited()

    # -- results ------------------------------------------------------------------------------
    def result_ready(self, result: TaskResult) -> None:
        """``result`` reached a ready state: counted once, its wait observed."""
        sent, result._sent_at = result._sent_at, None
        if sent is None:
            return
        child = self._states.get(result.state)
        if child is None:
            child = self._states[result.state] = self.results_received.labels(result.state)
        child.inc()
        self.task_wait.observe(time.perf_counter() - sent)
        self.sync_awaited()

    def result_timed_out(self, result: TaskResult) -> None:
        """A wait for ``result`` ran out before any ready state: counted once, as TIMEOUT."""
        if result._sent_at is None:
            return
        result._sent_at = None
        self._states["TIMEOUT"].inc()
        self.sync_awaited()

    def sync_awaited(self) -> None:
        """Multiprocess mode: write this process's count of awaited results (elsewhere the
        gauge computes it when scraped)."""
        if self.multiprocess:
            self.results_awaited.set(awaited_now())

    # -- connections and streams --------------------------------------------------------------
    def reconnected(self, service: str) -> None:
        self._reconnects[service].inc()

    def broker_blocked(self, connection: object) -> None:
        self._blocked_since.setdefault(id(connection), time.monotonic())

    def broker_unblocked(self, connection: object) -> None:
        """The block of ``connection`` ended (unblocked, or the connection closed)."""
        since = self._blocked_since.pop(id(connection), None)
        if since is not None:
            self.blocked_seconds.inc(max(time.monotonic() - since, 0.0))

    def stream_opened(self) -> None:
        self.event_streams.inc()

    def stream_closed(self) -> None:
        self.event_streams.dec()

    def refresh(self) -> None:
        """Bring what is counted lazily up to date before a scrape: the time of blocks still
        going on, and (multiprocess mode) the awaited results."""
        now = time.monotonic()
        for key, since in list(self._blocked_since.items()):
            self.blocked_seconds.inc(max(now - since, 0.0))
            self._blocked_since[key] = now
        self.sync_awaited()
