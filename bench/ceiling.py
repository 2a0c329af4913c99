"""Worker-bound ceiling: how fast the shared worker drains tasks that reply, with no web server.

1. The runner publishes N ``backend.v1.tasks.list_users`` tasks (the ab table's waiting task,
   ``rpc://`` replies to a reply queue) to a queue of its own, ``<run queue>-ceiling``, that
   the worker does not consume yet. It publishes with the library's producer (confirms on),
   whose consumer of the reply queue is the only other process involved.
2. ``celery control add_consumer`` (to this run's worker only) makes the worker start on it.
3. The time from the first reply to the last one gives the drain rate, ``(N - 1) /
   (last - first)``, req/s: what the worker (prefork, ``-c 2``), RabbitMQ and one reply
   consumer sustain on this machine for this task, whatever web server sends it. Also
   recorded: from the ``add_consumer`` call to the last reply, and the CPU ms per task of
   the worker tree, RabbitMQ + Redis, and the reply consumer (this process).
4. ``cancel_consumer``, and the queue (and its exchange) are deleted.

Each server's waiting req/s of the ab table divided by that ceiling says how close it gets
to the bound no web server can beat.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery

from bench import broker
from bench.config import AMQP_PORT, BROKER_URL, LIST_USERS, REDIS_PORT, queue
from bench.lineup import FIRE_AND_FORGET, WAITING
from bench.measure import TreeLoad, UsageMeter, listener_pid
from bench.procs import Managed
from bench.worker import client as celery_client

CHUNK = 500


def ceiling_queue() -> str:
    return f"{queue()}-ceiling"


def _control(method: str, node: str, queue_name: str) -> Any:
    app = celery_client()
    try:
        return getattr(app.control, method)(queue_name, destination=[node], reply=True,
                                            timeout=10)
    finally:
        app.close()


async def _drain(tasks: int, worker: Managed, node: str, timeout: float) -> dict[str, Any]:
    from tcelery_req_handler import Producer

    celery = Celery("bench_ceiling", broker=BROKER_URL, backend="rpc://")
    celery.conf.update(task_default_queue=queue(), task_serializer="json",
                       accept_content=["json"], result_accept_content=["json"])
    producer = Producer(celery, result_timeout=timeout, max_pending=tasks + 100)
    await producer.connect()
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {"tasks": tasks}
    try:
        results = []
        published = loop.time()
        for start in range(0, tasks, CHUNK):
            results += await asyncio.gather(*(
                producer.send_task(LIST_USERS, queue=ceiling_queue())
                for _ in range(min(CHUNK, tasks - start))))
        out["publish_s"] = round(loop.time() - published, 2)
        out["queued_before_start"] = await asyncio.to_thread(broker.queue_depth,
                                                             ceiling_queue())
        stamps: list[float] = []
        failures = 0

        async def one(result: Any) -> None:
            nonlocal failures
            await result.get(timeout=timeout, propagate=False)
            stamps.append(loop.time())
            if result.state != "SUCCESS":
                failures += 1

        meter = UsageMeter(worker.pid, worker.pid,
                           [listener_pid(AMQP_PORT), listener_pid(REDIS_PORT)])
        self0 = time.process_time()
        noise = TreeLoad([listener_pid(AMQP_PORT), listener_pid(REDIS_PORT)])
        waits = [asyncio.ensure_future(one(r)) for r in results]
        started = loop.time()
        replies = await asyncio.to_thread(_control, "add_consumer", node, ceiling_queue())
        out["add_consumer_reply"] = str(replies)[:300]
        _, pending = await asyncio.wait(waits, timeout=timeout)
        finished = loop.time()
        self_cpu = time.process_time() - self0
        out["other_load_pct"] = noise.percent()
        for task in pending:
            task.cancel()
        worker_cpu, broker_cpu = meter.worker(), meter.broker()
        stamps.sort()
        n = len(stamps)
        out.update(
            replies=n, failed=failures, missing=tasks - n,
            first_reply_s=round(stamps[0] - started, 3) if stamps else None,
            drain_s=round(stamps[-1] - stamps[0], 3) if n > 1 else None,
            total_s=round(finished - started, 3),
            ceiling_rps=round((n - 1) / (stamps[-1] - stamps[0]), 1) if n > 1 else None,
            rps_from_start=round(n / (stamps[-1] - started), 1) if n else None,
            worker_cpu_ms_per_task=round(worker_cpu * 1000 / n, 3) if n else None,
            broker_cpu_ms_per_task=(round(broker_cpu * 1000 / n, 3)
                                    if n and broker_cpu is not None else None),
            consumer_cpu_ms_per_task=round(self_cpu * 1000 / n, 3) if n else None,
        )
    finally:
        await producer.close()
    return out


def run(tasks: int, worker: Managed, node: str, log: Any = print,
        timeout: float = 300.0) -> dict[str, Any]:
    """The whole measurement; errors are reported in the result, not raised."""
    result: dict[str, Any] = {"tasks": tasks, "task": LIST_USERS, "queue": ceiling_queue()}
    try:
        result.update(asyncio.run(asyncio.wait_for(_drain(tasks, worker, node, timeout),
                                                   timeout + 120)))
        log(f"  ceiling: {result.get('replies')} of {tasks} replies, "
            f"{result.get('ceiling_rps')} tasks/s (worker {result.get('worker_cpu_ms_per_task')}"
            f" ms, broker {result.get('broker_cpu_ms_per_task')} ms, consumer "
            f"{result.get('consumer_cpu_ms_per_task')} ms per task)")
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        log(f"  ! ceiling: {result['error']}")
    finally:
        try:
            _control("cancel_consumer", node, ceiling_queue())
        except Exception as exc:
            result.setdefault("error", f"cancel_consumer failed: {exc!r}")
        try:
            broker.delete_queue(ceiling_queue())
        except Exception as exc:
            result.setdefault("error", f"queue not deleted: {exc!r}")
    return result


def fractions(rows: Sequence[Mapping[str, Any]],
              ceiling: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Each server's median req/s of the ab table over the ceiling, per profile and mode."""
    rps = (ceiling or {}).get("ceiling_rps")
    out = []
    for row in rows:
        s = row.get("summary") or {}
        if row["mode"] not in (WAITING, FIRE_AND_FORGET) or not s.get("rps_median"):
            continue
        out.append({"server": row["server"], "label": row["label"], "mode": row["mode"],
                    "profile": row["profile"], "rps": s["rps_median"],
                    "fraction": round(s["rps_median"] / rps, 3) if rps else None})
    return out
