"""Operations routes: Prometheus metrics, liveness and readiness.

* :class:`MetricsHandler` serves the exposition format that the ``Accept`` header asks for
  (OpenMetrics or Prometheus text, ``prometheus_client.exposition.choose_encoder``), of one
  registry, or, in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set), of a registry built
  afresh per scrape that reads every process's files. ``?name[]=...`` restricts the output.
* :class:`HealthHandler` (``/healthz``) answers 200 while the process serves requests.
* :class:`ReadyHandler` (``/readyz``) answers 200 when the producer can send and follow tasks
  (the broker connected, the ``rpc://`` reply queue consumed, the result backend up), else 503
  naming the failing checks; it connects a producer that has not connected yet.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any, ClassVar

from .. import metrics
from ..producer import Producer, get_producer
from .base import JSONErrorsMixin


class _OpsHandler(JSONErrorsMixin):
    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")

    def allowed_methods(self) -> list[str]:
        return ["GET"]


class MetricsHandler(_OpsHandler):
    """``GET /metrics``: the metrics, in the format the scraper accepts."""

    registry: ClassVar[Any] = None

    def get(self) -> None:
        client = metrics.require_client()
        from prometheus_client.exposition import choose_encoder

        if metrics.METRICS is not None:
            metrics.METRICS.refresh()
        if metrics.multiprocess_mode():  # every process's files, read afresh per scrape
            multiprocess: Any = importlib.import_module("prometheus_client.multiprocess")
            registry = client.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = self.registry if self.registry is not None else client.REGISTRY
        names = self.get_arguments("name[]")
        if names:
            registry = registry.restricted_registry(names)
        encoder, content_type = choose_encoder(self.request.headers.get("Accept", ""))
        self.set_header("Content-Type", content_type)
        self.finish(encoder(registry))


class HealthHandler(_OpsHandler):
    """``GET /healthz``: 200 ``{"status": "ok"}`` while the process serves."""

    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(_OpsHandler):
    """``GET /readyz``: 200 ``{"status": "ready", "checks": {...}}``, or 503 with
    ``"status": "unavailable"`` and ``"failing"``, the names of the failed checks."""

    producer: ClassVar[Producer | None] = None
    #: Longest wait for a producer that is not connected yet to connect, per probe.
    connect_wait: ClassVar[float] = 2.0

    async def get(self) -> None:
        try:
            checks = await self.checks(self.producer or get_producer())
        except Exception as exc:  # no producer installed, or a check that broke: say so
            checks = {"producer": {"ok": False, "error": str(exc) or type(exc).__name__}}
        failing = [name for name, check in checks.items() if not check["ok"]]
        if failing:
            self.write_json({"status": "unavailable", "checks": checks, "failing": failing},
                            503)
        else:
            self.write_json({"status": "ready", "checks": checks})

    async def checks(self, producer: Producer) -> dict[str, dict[str, Any]]:
        """Each check by name: ``{"ok": bool, ...what the part describes, "error"?}``."""
        broker_error, backend_error = await asyncio.gather(
            self._attempt(producer.transport.connect()),
            self._attempt(producer.source.start() if producer.source is not None else None))
        checks: dict[str, dict[str, Any]] = {}
        transport = producer.transport
        checks["broker"] = _check(transport.connected, transport.describe(), broker_error)
        source = producer.source
        if source is None:
            checks["result_backend"] = {"ok": True, "kind": "disabled"}
        else:
            consuming = getattr(source, "consuming", None)
            if consuming is not None:  # rpc://: the reply queue is where results come from
                checks["reply_consumer"] = _check(bool(consuming), {
                    "consuming": bool(consuming), "queue": source.reply_to}, None)
            checks["result_backend"] = _check(source.healthy, source.describe(),
                                              backend_error)
        return checks

    async def _attempt(self, opening: Any) -> str | None:
        """Run ``opening`` (a connect) for at most ``connect_wait``; the error, if any. A
        connect still going on carries on in the background (shielded)."""
        if opening is None:
            return None
        task = asyncio.ensure_future(opening)
        task.add_done_callback(_retrieve)
        try:
            await asyncio.wait_for(asyncio.shield(task), self.connect_wait)
        except (TimeoutError, asyncio.TimeoutError):
            return f"not connected within {self.connect_wait:g}s"
        except Exception as exc:
            return str(exc) or type(exc).__name__
        return None


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark the outcome of a connect nobody waits for any more as seen (no log noise)."""
    if not task.cancelled():
        task.exception()


def _check(ok: bool, described: dict[str, Any], error: str | None) -> dict[str, Any]:
    check: dict[str, Any] = {"ok": bool(ok) and error is None, **described}
    if error is not None:
        check["error"] = error
    return check
