"""Latency test: what a waiting request adds to the task's own run time, at concurrency 1.

Every server runs the same task on the shared worker, ``bench.sleep`` (or its Redis twin
``bench.sleep_redis``): it sleeps 20 ms and returns ``time.time()`` at the start and the end
of its body, measured in the worker. The runner sends N requests one after another (a new TCP
connection each, as ``ab`` does), and for each:

    added = end-to-end (connect to last byte, in the runner) - (finished - started)

i.e. everything but the task body: HTTP, publish (and confirm), the broker, the worker's
receive and result publish, the result's way back, the response. Servers, one at a time:

* ``ours_rpc``: ``bench/servers/ours_results.py --results rpc`` (``tcelery_routes``, rpc://);
* ``ours_redis``: the same with ``result_backend = redis://`` (states by pub/sub push);
* ``bridge``: ``bench/servers/bridge.py``, ``apply_async().get()`` in a thread pool, rpc://;
* ``flower``: Flower's ``POST /api/task/apply/bench.sleep_redis`` (Redis results);
* ``poll``: ``bench/servers/aio_celery_poll.py``: aio-celery's ``AsyncResult.get()`` at its
  default interval (0.5 s), polling the Redis key (emulated by hand if aio-celery is missing).
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import stats
from bench.config import AMQP_PORT, HOST, REDIS_PORT, ROOT, SLEEP_REDIS
from bench.lineup import ServerSpec
from bench.measure import TreeLoad, listener_pid
from bench.procs import Managed, StartError, free_port

#: The task's sleep (ms): its own default.
TASK_MS = 20
REQUEST_TIMEOUT = 40.0
_FLOWER_BODY = b'{"timeout": 30}'


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    argv: Callable[[int, Path], list[str]]
    path: str
    body: bytes | None = None  # POST it (Flower)
    ready_path: str = "/pending"
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 30.0
    #: The task's result out of the response body.
    result: Callable[[Any], Any] = lambda body: body
    #: Results in Redis: their keys are deleted afterwards.
    redis: bool = False


def _ours(results: str) -> Callable[[int, Path], list[str]]:
    def argv(port: int, tmp: Path) -> list[str]:
        return [sys.executable, "-m", "bench.servers.ours_results", "--port", str(port),
                "--results", results]
    return argv


def _module(name: str) -> Callable[[int, Path], list[str]]:
    def argv(port: int, tmp: Path) -> list[str]:
        return [sys.executable, "-m", name, "--port", str(port)]
    return argv


def targets(specs: dict[str, ServerSpec]) -> list[Target]:
    """The five servers of the latency test (Flower's command line is the ab table's)."""
    flower = specs["flower"]
    return [
        Target("ours_rpc", "tcelery-req-handler, rpc:// results", _ours("rpc"), "/v1/sleep"),
        Target("ours_redis", "tcelery-req-handler, Redis results (pub/sub push)",
               _ours("redis"), "/v1/sleep", redis=True),
        Target("bridge", "hand-written executor bridge (rpc://)",
               _module("bench.servers.bridge"), "/v1/sleep", ready_path="/"),
        Target("flower", "Flower task API (Redis results)", flower.argv,
               f"/api/task/apply/{SLEEP_REDIS}", body=_FLOWER_BODY,
               ready_path=flower.ready_path, env=flower.env,
               start_timeout=flower.start_timeout,
               result=lambda body: body.get("result") if isinstance(body, dict) else None,
               redis=True),
        Target("poll", "aio-celery AsyncResult.get() (polls Redis every 0.5 s)",
               _module("bench.servers.aio_celery_poll"), "/v1/sleep", ready_path="/mode",
               redis=True),
    ]


def request(port: int, target: Target) -> tuple[float, int, Any]:
    """One request on a new connection: (seconds from connect to the last byte, status,
    decoded body)."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    try:
        headers = {"Connection": "close"}
        if target.body is not None:
            headers["Content-Type"] = "application/json"
        conn.request("POST" if target.body is not None else "GET", target.path,
                     body=target.body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        elapsed = time.perf_counter() - started
        status = response.status
    finally:
        conn.close()
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    return elapsed, status, body


def measure(target: Target, port: int, requests: int, warmup: int,
            log: Any = print) -> dict[str, Any]:
    """``warmup`` unrecorded requests, then ``requests`` recorded ones, one at a time."""
    out: dict[str, Any] = {"key": target.key, "label": target.label, "requests": requests,
                           "ok": 0, "errors": 0, "first_errors": []}
    e2e: list[float] = []
    task: list[float] = []
    added: list[float] = []
    ids: list[str] = []
    for i in range(warmup + requests):
        try:
            elapsed, status, body = request(port, target)
            result = target.result(body)
            if status != 200 or not isinstance(result, dict) or "finished" not in result:
                raise ValueError(f"status {status}, body {str(body)[:200]}")
        except Exception as exc:
            if i >= warmup:
                out["errors"] += 1
                if len(out["first_errors"]) < 3:
                    out["first_errors"].append(f"{type(exc).__name__}: {exc}"[:300])
            continue
        ids.append(str(result.get("task_id", "")))
        if i < warmup:
            continue
        own = float(result["finished"]) - float(result["started"])
        e2e.append(elapsed * 1000)
        task.append(own * 1000)
        added.append((elapsed - own) * 1000)
        out["ok"] += 1
    out.update(e2e_ms=stats.summary(e2e), task_ms=stats.summary(task),
               added_ms=stats.summary(added), added_samples_ms=[round(a, 2) for a in added])
    out["task_ids"] = ids  # for the Redis clean-up; dropped before the report
    log(f"  {target.key:10} added p50 {out['added_ms']['p50']} ms, p99 "
        f"{out['added_ms']['p99']} ms (task {out['task_ms']['p50']} ms; "
        f"{out['ok']} ok, {out['errors']} errors)")
    return out


def _mode(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/mode")
        return dict(json.loads(conn.getresponse().read()))
    finally:
        conn.close()


def run(specs: dict[str, ServerSpec], requests: int, warmup: int, tmp: Path,
        log: Any = print, delete_keys: Callable[[list[str]], object] | None = None
        ) -> dict[str, Any]:
    """Every target in turn: start it, measure, stop it. Errors are reported, not raised."""
    results: list[dict[str, Any]] = []
    for target in targets(specs):
        port = free_port()
        server = Managed(f"latency-{target.key}", target.argv(port, tmp), cwd=target.cwd,
                         log_dir=tmp, env=target.env)
        try:
            server.wait_http(f"http://{HOST}:{port}{target.ready_path}", target.start_timeout)
            noise = TreeLoad([listener_pid(AMQP_PORT), listener_pid(REDIS_PORT)])
            result = measure(target, port, requests, warmup, log)
            result["other_load_pct"] = noise.percent()
            if target.key == "poll":
                result.update(_mode(port))
                if result.get("mode") == "emulated":
                    result["label"] = ("aio-celery's wait, emulated: Redis GET every 0.5 s "
                                       "(aio-celery not installed)")
        except StartError as exc:
            log(f"  ! latency {target.key}: {exc}")
            result = {"key": target.key, "label": target.label, "requests": requests,
                      "ok": 0, "errors": requests, "error": str(exc)[:2000]}
        finally:
            server.stop()
        ids = result.pop("task_ids", [])
        if target.redis and delete_keys is not None and ids:
            delete_keys(ids)
        results.append(result)
    return {"task": "bench.sleep / bench.sleep_redis", "task_sleep_ms": TASK_MS,
            "requests": requests, "warmup": warmup, "concurrency": 1, "results": results,
            "ratios": ratios(results)}


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each server's added p50/p99 over ours' (rpc://)."""
    base = next((r for r in results if r["key"] == "ours_rpc" and r.get("ok")), None)
    out = []
    for r in results:
        entry: dict[str, Any] = {"key": r["key"]}
        for q in ("p50", "p99"):
            mine = (r.get("added_ms") or {}).get(q)
            ref = (base or {}).get("added_ms", {}).get(q) if base else None
            entry[f"{q}_vs_ours_rpc"] = round(mine / ref, 2) if mine and ref else None
        out.append(entry)
    return out
