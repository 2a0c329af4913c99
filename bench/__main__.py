"""``python -m bench [--smoke] [--only PARTS]``: the whole benchmark, from a bare machine to
results/.

Steps: install ``ab`` if missing; start the shared worker and seed
the example's database; for each server (hello world, executor bridge, Flower, ours) start it,
warm up, run ``ab`` per profile and repetition, stop it; the worker-bound ceiling; the memory
test; the latency test at concurrency 1; 10,000 event streams; write
``bench/results/latest.{md,json,png}`` (``--smoke``: ``bench/results/tmp/smoke.*``). Every
child process is stopped at the end, on error and on Ctrl-C. ``--only`` runs some parts
(``ab,memory,latency,streams,ceiling``) and keeps the others' results from the previous
results file, each marked with the run it came from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench import (
    analysis,
    broker,
    ceiling,
    latency,
    memory,
    procs,
    profiling,
    report,
    streams,
    system,
)
from bench.config import BROKER_URL, REDIS_URL, RESULTS_DIR, ROOT, TMP_DIR, queue
from bench.lineup import example_missing, lineup
from bench.plan import FULL, SMOKE, Plan
from bench.runner import Row, bench_server
from bench.worker import seed_users, start_worker, worker_env

#: Bound on one memory measurement (warm-up, 10,000 connections, release, answers).
MEMORY_TEST_LIMIT = 600
#: The parts of a run, in the order they run (``--only`` picks some).
PARTS = ("ab", "ceiling", "memory", "latency", "streams")
#: Where each part's results live in the JSON (carried over from the previous run by --only).
PART_KEYS = {"ab": ("rows", "skipped"), "ceiling": ("ceiling",), "memory": ("memory",),
             "latency": ("latency",), "streams": ("streams",)}

NOTES = [
    "Everything runs on this machine over loopback: RabbitMQ, Redis (`{redis}`, Flower's "
    "result backend only), one Celery worker, one web server at a time, and `ab` without "
    "keep-alive, as in the seed.",
    "One worker serves every server: `celery -A bench.worker_app worker -Q {queue} -c 2 -P "
    "prefork -l WARNING`, run from `example/`. The queue is the run's own (the example gets it "
    "as `EXAMPLE_QUEUE`), so no other worker or concurrent run on the broker shares it. "
    "`bench.worker_app` is the example's Celery app "
    "(`backend.v1`, `rpc://` results, JSON, STARTED tracked only for `report`) plus two "
    "bench tasks, so "
    "every server runs the example's `list_users` body against the same SQLite file (10 users).",
    "(a) hello world answers the very bytes `list_users` returns as compact JSON, with no "
    "task; it is the bound for one Tornado process on this machine.",
    "(b) the executor bridge: Tornado + `run_in_executor` on a 16-thread pool around "
    "`apply_async().get()` (waiting) or `apply_async` (fire and forget), a Celery app with "
    "`rpc://` and a 16-connection producer pool (8-16 threads measured fastest on 2 cores; "
    "32-128 were slower).",
    "(c) Flower {flower} with its defaults, `FLOWER_UNAUTHENTICATED_API=true` and "
    "`--enable_events=False` (otherwise Flower turns on task events in the shared worker, "
    "which would tax every server; without them Flower is only faster). Its "
    "`/api/task/apply` hangs with `rpc://`, so it calls `bench.list_users_redis`, the same "
    "body with a Redis result backend: Flower with the backend it works with. Requests are "
    "`POST` with body `{{}}`.",
    "(d) ours: `example/main.py --port N` unchanged, `/v1/user` (waiting) and "
    "`/v1/async_user` (fire and forget, 202 after the broker's publisher confirm).",
    "Each run: `ab -r -t LIMIT -n N -c C URL` (`-r`: a socket error is a failed request, not "
    "an aborted run; the limit only bounds a stuck run). req/s is ab's; "
    "the table gives the median of the runs and their min and max; failed and non-2xx are "
    "summed over the runs; p50/p99 are ab's percentiles (medians over runs). Web CPU ms/req "
    "is the server process's user+system CPU during the run over completed requests; worker "
    "CPU ms/req is the worker's whole process tree's, measured until it has drained the "
    "queue; broker CPU likewise, RabbitMQ's plus Redis's (Redis carries Flower's results; "
    "both also serve any other user of them). Web peak RSS "
    "is sampled every 50 ms. Listen drops: the kernel's ListenOverflows counter over the run "
    "(connections whose SYN was dropped on a full accept queue and retried a second later).",
    "Other load %: the share of the machine's CPU that processes outside the benchmark "
    "(neither the web server, the worker, RabbitMQ, Redis nor ab) used during the ab run. On a "
    "shared machine it is the noise figure: compare rows with similar values only.",
    "Before each endpoint's runs: a warm-up ab run (not recorded). After every run the runner "
    "waits for the queue to empty and the worker to go idle.",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true",
                        help="a few hundred requests per server, one run, small memory test")
    parser.add_argument("--runs", type=int, help="repetitions per profile (default 3)")
    parser.add_argument("--servers", default="hello,bridge,flower,ours",
                        help="comma-separated subset of hello,bridge,flower,ours")
    parser.add_argument("--memory-requests", type=int,
                        help="waiting requests in the memory test (default 10000; 0 skips it)")
    parser.add_argument("--profile", action="store_true",
                        help="record ours with py-spy during the first run of each profile "
                             "(into the results directory; needs `pip install py-spy`)")
    parser.add_argument("--only", help="comma-separated parts to run, of "
                        + ",".join(PARTS) + " (default: all); the results of the others are "
                        "kept from the previous results file")
    parser.add_argument("--latency-requests", type=int,
                        help="recorded requests per server in the latency test (default 300)")
    parser.add_argument("--streams", type=int,
                        help="event streams open at once in the stream test (default 10000)")
    parser.add_argument("--ceiling-tasks", type=int,
                        help="tasks queued for the worker-bound ceiling (default 5000)")
    parser.add_argument("--out", type=Path, help="results directory")
    parser.add_argument("--stem", help="results file name without extension")
    return parser.parse_args(argv)


def _plan(args: argparse.Namespace) -> Plan:
    plan = SMOKE if args.smoke else FULL
    changes: dict[str, Any] = {}
    if args.runs:
        changes["runs"] = args.runs
    if args.memory_requests is not None:
        changes["memory_requests"] = args.memory_requests
    for name in ("latency_requests", "streams", "ceiling_tasks"):
        if getattr(args, name, None) is not None:
            changes[name] = getattr(args, name)
    if changes:
        from dataclasses import replace
        plan = replace(plan, **changes)
    return plan


def _prune_tmp(keep: int = 5) -> None:
    """Keep the logs of the last few runs only."""
    if not TMP_DIR.exists():
        return
    runs = sorted((p for p in TMP_DIR.iterdir() if p.is_dir() and p.name.startswith("run-")),
                  key=lambda p: p.stat().st_mtime)
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _hold(module: str, target: memory.Target, plan: Plan, tmp: Path,
          log: Any) -> dict[str, Any]:
    """One memory measurement: start the hold server ``module``, park, measure, release."""
    port = procs.free_port()
    server = procs.Managed(target.name + "_hold", [sys.executable, "-m", module, "--port",
                                                   str(port)], cwd=ROOT, log_dir=tmp)
    try:
        server.wait_http(f"http://127.0.0.1:{port}/pending", 30)
        try:
            result = asyncio.run(asyncio.wait_for(
                memory.run(port, server.pid, plan.memory_requests, target,
                           warmup=min(500, plan.memory_requests)), MEMORY_TEST_LIMIT))
        except TimeoutError:
            result = memory.MemoryResult(server=target.name, requests=plan.memory_requests,
                                         error=f"not done within {MEMORY_TEST_LIMIT} s")
        if result.error:
            log(f"  ! memory test ({target.name}): {result.error}\n{server.tail(1500)}")
        log(f"  {target.name}: {result.rss_per_request:.0f} bytes RSS per waiting request, "
            f"{result.ok_200} of {plan.memory_requests} answered 200")
        return result.to_dict()
    finally:
        server.stop()


def _memory_test(plan: Plan, tmp: Path, log: Any) -> dict[str, Any]:
    """Ours, then plain Tornado as the floor (``memory["floor"]``)."""
    reason = example_missing()
    if reason:
        return {"skipped": reason}
    result = _hold("bench.servers.ours_hold", memory.ours_target(), plan, tmp, log)
    result["floor"] = _hold("bench.servers.tornado_hold", memory.floor_target(), plan, tmp, log)
    return result


def _parts(only: str | None) -> list[str]:
    if not only:
        return list(PARTS)
    wanted = [p.strip() for p in only.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        raise RuntimeError(f"--only: unknown part {unknown[0]!r} (parts: {','.join(PARTS)})")
    return [p for p in PARTS if p in wanted]


def _carry_over(data: dict[str, Any], parts: list[str], previous: Path) -> None:
    """Put the previous results of the parts not run into ``data``, marked with their run."""
    if not previous.exists():
        return
    try:
        old = json.loads(previous.read_text())
    except ValueError:
        return
    old_from = old.get("meta", {}).get("carried_over", {})
    carried = {}
    for part, keys in PART_KEYS.items():
        if part in parts or not all(k in old for k in keys):
            continue
        for key in keys:
            data[key] = old[key]
        carried[part] = old_from.get(part) or {
            "started": old["meta"].get("started"), "command": old["meta"].get("command"),
            "machine": old["meta"].get("machine")}
    data["meta"]["carried_over"] = carried


def run(args: argparse.Namespace) -> int:
    plan = _plan(args)
    parts = _parts(args.only)
    started, t0 = dt.datetime.now(dt.timezone.utc), time.monotonic()
    out_dir = args.out or (TMP_DIR if plan.smoke else RESULTS_DIR)
    stem = args.stem or ("smoke" if plan.smoke else "latest")
    wanted = [s.strip() for s in args.servers.split(",") if s.strip()] if "ab" in parts else []

    def log(message: str) -> None:
        print(message, flush=True)

    system.ensure_tools()
    broker.preflight()
    if args.profile and not profiling.available():
        raise RuntimeError("--profile needs py-spy: pip install py-spy")
    system.raise_fd_limit(max(plan.memory_requests, plan.streams) + 4096)
    _prune_tmp()
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"{started:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"
    # Every child inherits it: the run's own queue (see bench.config.queue).
    os.environ["BENCH_QUEUE"] = f"bench-{run_id}"
    tmp = (TMP_DIR / f"run-{run_id}").resolve()
    tmp.mkdir(parents=True)
    meta = {"command": shlex.join(["python", "-m", "bench", *sys.argv[1:]]),
            "started": f"{started:%Y-%m-%d %H:%M UTC}", "smoke": plan.smoke,
            "profiled": args.profile,
            "plan": {"profiles": [p.__dict__ for p in plan.profiles], "runs": plan.runs,
                     "memory_requests": plan.memory_requests, "parts": parts,
                     "latency_requests": plan.latency_requests, "streams": plan.streams,
                     "ceiling_tasks": plan.ceiling_tasks},
            "logs": str(tmp), **system.describe()}
    meta["notes"] = [n.format(redis=REDIS_URL, queue=queue(),
                              flower=meta["versions"]["flower"]) for n in NOTES]
    log(f"bench: {'smoke' if plan.smoke else 'full'} run, logs in {tmp}")

    worker = start_worker(tmp)
    seed_users(tmp)
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    for spec in lineup(worker_env(tmp)):
        if spec.key not in wanted:
            continue
        reason = spec.unavailable()
        if reason:
            skipped[spec.key] = reason
            log(f"- {spec.key}: skipped ({reason})")
            continue
        if not worker.alive():
            raise procs.StartError(f"the worker died:\n{worker.tail()}")
        log(f"- {spec.key}: {spec.label}")
        try:
            profile_dir = out_dir if args.profile and spec.key == "ours" else None
            rows += bench_server(spec, plan, worker, tmp, log, profile_dir)
        except procs.StartError as exc:
            log(f"  ! {exc}")
            rows.append(Row(spec.key, spec.label, "error", "-", 0, 0, "", error=str(exc)))
    ceiling_result: dict[str, Any] = {"skipped": "not run"}
    if "ceiling" in parts:
        log(f"- ceiling: the worker drains {plan.ceiling_tasks} queued tasks, no web server")
        ceiling_result = ceiling.run(plan.ceiling_tasks, worker, worker.node, log)
    memory_result: dict[str, Any] = {"skipped": "--memory-requests 0"}
    if plan.memory_requests and "memory" in parts:
        log(f"- memory: {plan.memory_requests} waiting requests on one process of ours")
        memory_result = _memory_test(plan, tmp, log)
    latency_result: dict[str, Any] = {"skipped": "not run"}
    if "latency" in parts and plan.latency_requests:
        log(f"- latency: {plan.latency_requests} sequential requests per server, 20 ms task")
        latency_result = latency.run({s.key: s for s in lineup(worker_env(tmp))},
                                     plan.latency_requests, plan.latency_warmup, tmp, log,
                                     broker.delete_result_keys)
    streams_result: dict[str, Any] = {"skipped": "not run"}
    if "streams" in parts and plan.streams:
        log(f"- streams: {plan.streams} event streams at once on one process of ours")
        streams_result = streams.run(plan.streams, plan.streams_per_task, plan.stream_steps,
                                     plan.stream_interval, run_id, tmp, log,
                                     broker.delete_result_keys)
    procs.stop_all()

    row_dicts = [r.to_dict() for r in rows]
    meta["duration_s"] = round(time.monotonic() - t0, 1)
    data: dict[str, Any] = {"meta": meta, "rows": row_dicts, "skipped": skipped,
                            "memory": memory_result, "ceiling": ceiling_result,
                            "latency": latency_result, "streams": streams_result}
    if parts != list(PARTS):
        _carry_over(data, parts, out_dir / f"{stem}.json")
    data["ratios"] = analysis.ratios(data["rows"])
    data["targets"] = {p: analysis.targets(data["rows"], data["memory"], p)
                       for p in analysis.profiles(data["rows"])}
    data["ceiling_fractions"] = ceiling.fractions(data["rows"], data["ceiling"])
    paths = report.write(data, out_dir, stem)
    log(f"bench: done in {meta['duration_s']:.0f} s; wrote "
        + ", ".join(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
                    for p in paths.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs.install_cleanup()
    try:
        return run(args)
    except (RuntimeError, procs.StartError) as exc:
        print(f"bench: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        procs.stop_all()
        if "BENCH_QUEUE" in os.environ:
            with contextlib.suppress(Exception):
                broker.delete_queue(queue())


if __name__ == "__main__":
    assert BROKER_URL  # configuration imported before any child starts
    sys.exit(main())
