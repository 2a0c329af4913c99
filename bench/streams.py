"""Event-stream test: N Server-Sent-Events streams open at once on one Tornado process.

The server is ours on Redis results (``bench/servers/ours_results.py --results redis``,
``tcelery_status_routes``): each ``GET /tasks/<id>/events`` stream gets the task's states by
the producer's one Redis pub/sub connection. The client is ``bench/sse_client.py``, a
separate process (raw asyncio sockets, loopback). Both raise their open-file limit.

1. Warm-up: a small full cycle (streams opened, tasks run, streams closed), so lazy imports
   and free lists are in the baseline; then the server's baseline RSS.
2. The client opens N streams spread over N / per_task task ids that no task has yet; each
   gets its ``retry:`` line and a first event (PENDING).
3. With all N open, the server's RSS over a 1 s plateau (peak) and its open fds:
   ``(RSS open - baseline) / N`` is the RSS per stream.
4. The runner sends the tasks (``bench.progress``: ``steps`` PROGRESS states ``interval``
   apart, each with ``time.time()`` in its meta, then SUCCESS with ``t`` in the result); the
   shared worker runs two at a time. Every stream must receive ``steps + 2`` events (PENDING,
   each PROGRESS, SUCCESS) and be closed by the server; the client records, for every
   PROGRESS and SUCCESS event, the delay from the worker's timestamp to its receipt.

Task ids are ``bench-<run>-stream-...``; their Redis keys are deleted at the end.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from celery import Celery

from bench.config import AMQP_PORT, BROKER_URL, HOST, PROGRESS, REDIS_PORT, ROOT, queue
from bench.measure import TreeLoad, cpu_seconds, listener_pid, rss_bytes
from bench.procs import Managed, StartError, free_port


def _send_tasks(ids: list[str], steps: int, interval: float) -> None:
    # No result backend on the sending side: an rpc:// client would declare a reply queue
    # nobody consumes (the worker stores these tasks' states in Redis, by the task's backend).
    app = Celery("bench_streams", broker=BROKER_URL)
    app.conf.update(task_default_queue=queue(), task_serializer="json",
                    accept_content=["json"], broker_pool_limit=1)
    try:
        for task_id in ids:
            app.send_task(PROGRESS, kwargs={"steps": steps, "interval": interval},
                          task_id=task_id)
    finally:
        app.close()


def _cycle(port: int, server: Managed, ids: list[str], per_task: int, steps: int,
           interval: float, tmp: Path, name: str, *, measure: bool) -> dict[str, Any]:
    """One client process over ``ids``: open, (measure), send the tasks, count the events."""
    ids_file, ready, out = (tmp / f"{name}.{ext}" for ext in ("ids", "ready", "json"))
    ids_file.write_text("\n".join(ids))
    ready.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    # Bound: opening, plus the worker's time for the tasks (two at a time), times three.
    run_s = len(ids) * (steps * interval + 0.2) / 2
    timeout = 120 + 3 * run_s
    client = Managed(name, [sys.executable, "-m", "bench.sse_client", "--port", str(port),
                            "--ids-file", str(ids_file), "--per-task", str(per_task),
                            "--ready-file", str(ready), "--out", str(out),
                            "--timeout", str(timeout)], cwd=ROOT, log_dir=tmp)
    result: dict[str, Any] = {}
    noise = TreeLoad([listener_pid(AMQP_PORT), listener_pid(REDIS_PORT)])
    try:
        client.wait_ready(ready.exists, 150, "all streams open")
        if measure:
            peak = 0
            for _ in range(10):  # a 1 s plateau: every stream open, nothing moves
                peak = max(peak, rss_bytes(server.pid))
                time.sleep(0.1)
            result["open_rss"] = peak
            result["server_fds"] = psutil.Process(server.pid).num_fds()
        cpu0, sent = cpu_seconds(server.pid), time.monotonic()
        _send_tasks(ids, steps, interval)
        try:
            client.proc.wait(timeout + 30)
        except Exception as exc:
            raise StartError(f"{name} did not finish: {exc!r}\n{client.tail()}") from None
        result["events_s"] = round(time.monotonic() - sent, 2)
        result["other_load_pct"] = noise.percent()
        result["server_cpu_s"] = round(cpu_seconds(server.pid) - cpu0, 3)
        if not out.exists():
            raise StartError(f"{name} wrote no result:\n{client.tail()}")
        result["client"] = json.loads(out.read_text())
        result["ready"] = json.loads(ready.read_text())
    finally:
        client.stop()
    return result


def run(streams: int, per_task: int, steps: int, interval: float, run_id: str, tmp: Path,
        log: Any = print, delete_keys: Callable[[list[str]], object] | None = None,
        warmup: int = 1000) -> dict[str, Any]:
    """The whole test; errors are reported in the result, not raised."""
    tasks = max(1, streams // per_task)
    streams = tasks * per_task
    warm_tasks = max(1, min(warmup, streams // 2) // per_task)
    out: dict[str, Any] = {"streams": streams, "tasks": tasks, "per_task": per_task,
                           "steps": steps, "interval_s": interval,
                           "expected_events_per_stream": steps + 2,
                           "expected_events": streams * (steps + 2),
                           "warmup_streams": warm_tasks * per_task, "error": ""}
    warm_ids = [f"bench-{run_id}-stream-warm-{i}" for i in range(warm_tasks)]
    ids = [f"bench-{run_id}-stream-{i}" for i in range(tasks)]
    port = free_port()
    server = Managed("streams-ours", [sys.executable, "-m", "bench.servers.ours_results",
                                      "--port", str(port), "--results", "redis"],
                     cwd=ROOT, log_dir=tmp)
    try:
        server.wait_http(f"http://{HOST}:{port}/pending", 30)
        _cycle(port, server, warm_ids, per_task, steps, interval, tmp, "sse-warmup",
               measure=False)
        time.sleep(1.0)
        out["baseline_rss"] = rss_bytes(server.pid)
        main = _cycle(port, server, ids, per_task, steps, interval, tmp, "sse-client",
                      measure=True)
        client = main.pop("client")
        out.update(main)
        out["client"] = client
        out["rss_per_stream"] = round((main["open_rss"] - out["baseline_rss"]) / streams, 1)
        out["events_received"] = client["events"]
        out["all_delivered"] = (client["events"] == out["expected_events"]
                                and client["completed"] == streams)
        out["server_cpu_ms_per_event"] = (round(main["server_cpu_s"] * 1000 / client["events"],
                                                4) if client["events"] else None)
        if not server.alive():
            out["error"] = f"server died:\n{server.tail(1500)}"
        log(f"  streams: {client['first_events']:,} of {streams:,} open; "
            f"{out['rss_per_stream'] / 1000:.1f} KB RSS per stream; events "
            f"{client['events']:,} of {out['expected_events']:,}, completed "
            f"{client['completed']:,}; delay p50 {client['delay_ms']['p50']} ms, p99 "
            f"{client['delay_ms']['p99']} ms")
    except (StartError, OSError, ValueError, KeyError, psutil.Error) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"[:3000]
        log(f"  ! streams: {out['error'][:1500]}\n{server.tail(1500)}")
    finally:
        server.stop()
        if delete_keys is not None:
            delete_keys(warm_ids + ids)
    return out
