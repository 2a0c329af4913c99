"""Drive one server: start it, warm each endpoint up, run ab per profile, record resources.

Servers run one at a time, each alone with the shared worker, RabbitMQ and ab, so no server
competes with another for the two cores. After every run the runner waits until the worker
has drained the queue (fire and forget leaves a backlog) and gone idle, so the next run starts
from the same state and the worker's CPU for those tasks is charged to the run that caused it.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import ab, broker, profiling
from bench.config import AMQP_PORT, HOST, REDIS_PORT, queue
from bench.lineup import BOUND, Endpoint, ServerSpec
from bench.measure import (
    OtherLoad,
    RssSampler,
    UsageMeter,
    cpu_seconds,
    listen_overflows,
    listener_pid,
)
from bench.plan import Plan, Profile
from bench.procs import Managed, free_port


@dataclass
class Run:
    """One ab run against one endpoint, with the resources it cost."""

    ab: dict[str, Any]
    web_cpu_ms_per_req: float | None
    worker_cpu_ms_per_req: float | None
    #: RabbitMQ's + Redis's CPU over the run and the drain (Redis only matters for Flower's
    #: results); other users of a shared broker add to it (None if not visible).
    broker_cpu_ms_per_req: float | None
    peak_rss_mb: float
    drained: bool
    #: Connections the kernel dropped on a full listen queue during the run (global counter).
    listen_overflows: int | None = None
    #: % of the machine used by processes outside the benchmark during the ab run: noise.
    other_load_pct: float | None = None


@dataclass
class Row:
    """One (server, mode, profile): its runs and their summary (medians, sums, maxima)."""

    server: str
    label: str
    mode: str
    profile: str
    requests: int
    concurrency: int
    url: str
    runs: list[Run] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    warmup: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def summarize(runs: Sequence[Run]) -> dict[str, Any]:
    """req/s median/min/max; failures summed over runs; latency and CPU as medians."""
    results = [r.ab for r in runs]
    rps = [r["rps"] for r in results if r["ok"]]
    return {
        "runs": len(runs),
        "rps_median": _median(rps),
        "rps_min": min(rps) if rps else None,
        "rps_max": max(rps) if rps else None,
        "complete": sum(r["complete"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "non_2xx": sum(r["non_2xx"] for r in results),
        "aborted_runs": sum(1 for r in results if not r["ok"]),
        "document_length": results[0]["document_length"] if results else 0,
        "p50_ms": _median([r["percentiles_ms"].get("50") for r in results]),
        "p99_ms": _median([r["percentiles_ms"].get("99") for r in results]),
        "peak_rss_mb": max(r.peak_rss_mb for r in runs) if runs else None,
        "web_cpu_ms_per_req": _median([r.web_cpu_ms_per_req for r in runs]),
        "worker_cpu_ms_per_req": _median([r.worker_cpu_ms_per_req for r in runs]),
        "broker_cpu_ms_per_req": _median([r.broker_cpu_ms_per_req for r in runs]),
        "listen_overflows": _median([r.listen_overflows for r in runs]),
        "other_load_pct": _median([r.other_load_pct for r in runs]),
    }


def settle(worker: Managed | None, timeout: float) -> bool:
    """Wait (bounded) until the queue is empty and the worker tree has gone idle."""
    deadline = time.monotonic() + timeout
    drained = broker.wait_empty(queue(), timeout)
    if worker is None:
        return drained
    previous = cpu_seconds(worker.pid, tree=True)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = cpu_seconds(worker.pid, tree=True)
        if now - previous < 0.3 * 0.05:  # under 5% of one core: idle
            return drained
        previous = now
    return False


def _per_request_ms(cpu_s: float, complete: int) -> float | None:
    return round(cpu_s * 1000 / complete, 3) if complete else None


def measure(server: Managed, worker: Managed | None, url: str, profile: Profile,
            post_file: Path | None, plan: Plan, spy: Path | None = None) -> Run:
    """One ab run with CPU and peak-RSS accounting, then drain the queue.

    With ``spy``, py-spy records the server during the run into that file (and a summary
    next to it); the run's CPU figures then include py-spy's small sampling overhead.
    """
    overflows = listen_overflows()
    meter = UsageMeter(server.pid, worker.pid if worker else None,
                       [listener_pid(AMQP_PORT), listener_pid(REDIS_PORT)])
    recording = profiling.record(server.pid, spy) if spy else contextlib.nullcontext()
    other = OtherLoad()
    with recording, RssSampler(server.pid) as rss:
        result = ab.run(url, profile.requests, profile.concurrency,
                        time_limit=profile.time_limit, post_file=post_file)
    web_cpu = meter.web()
    other_pct = other.percent(web_cpu + meter.worker() + (meter.broker() or 0.0))
    overflows_after = listen_overflows()
    if spy and spy.exists():
        spy.with_name(spy.stem + "-summary.txt").write_text(profiling.summarize(spy))
    drained = settle(worker, plan.drain_timeout)
    worker_cpu, broker_cpu = meter.worker(), meter.broker()
    return Run(ab=result.to_dict(),
               web_cpu_ms_per_req=_per_request_ms(web_cpu, result.complete),
               worker_cpu_ms_per_req=(_per_request_ms(worker_cpu, result.complete)
                                      if worker else None),
               broker_cpu_ms_per_req=(_per_request_ms(broker_cpu, result.complete)
                                      if broker_cpu is not None and worker else None),
               peak_rss_mb=round(rss.peak / 2**20, 1), drained=drained,
               listen_overflows=(overflows_after - overflows
                                 if overflows is not None and overflows_after is not None
                                 else None),
               other_load_pct=other_pct)


def _post_file(endpoint: Endpoint, tmp: Path) -> Path | None:
    if endpoint.post_json is None:
        return None
    path = tmp / "post.json"
    path.write_bytes(endpoint.post_json)
    return path


def _uses_worker(endpoint: Endpoint) -> bool:
    return endpoint.mode != BOUND


def bench_server(spec: ServerSpec, plan: Plan, worker: Managed, tmp: Path,
                 log: Any = print, profile_dir: Path | None = None) -> list[Row]:
    """Start ``spec``'s server, measure every endpoint under every profile, stop it."""
    port = free_port()
    rows: list[Row] = []
    server = Managed(spec.key, spec.argv(port, tmp), cwd=spec.cwd, log_dir=tmp, env=spec.env)
    try:
        server.wait_http(f"http://{HOST}:{port}{spec.ready_path}", spec.start_timeout)
        for endpoint in spec.endpoints:
            url = f"http://{HOST}:{port}{endpoint.path}"
            post_file = _post_file(endpoint, tmp)
            warm = ab.run(url, plan.warmup.requests, plan.warmup.concurrency,
                          time_limit=plan.warmup.time_limit, post_file=post_file)
            settle(worker, plan.drain_timeout)
            if not warm.ok or warm.failed or warm.non_2xx:
                log(f"  ! {spec.key} {endpoint.mode} warm-up: ok={warm.ok} failed={warm.failed}"
                    f" non-2xx={warm.non_2xx} {warm.error}\n{server.tail(1500)}")
            for profile in plan.profiles:
                row = Row(spec.key, spec.label, endpoint.mode, profile.name, profile.requests,
                          profile.concurrency, url, warmup=warm.to_dict())
                for i in range(plan.runs):
                    spy = (profile_dir / f"profile-{profile.name}-{spec.key}-{endpoint.mode}.txt"
                           if profile_dir and i == 0 else None)
                    run = measure(server, worker if _uses_worker(endpoint) else None, url,
                                  profile, post_file, plan, spy)
                    row.runs.append(run)
                    log(f"  {spec.key:7} {endpoint.mode:16} {profile.name:5} run {i + 1}: "
                        f"{run.ab['rps']:8.1f} req/s  complete {run.ab['complete']:5}  "
                        f"failed {run.ab['failed']}  non-2xx {run.ab['non_2xx']}  "
                        f"web {run.web_cpu_ms_per_req} ms/req"
                        + ("" if run.ab["ok"] else f"  ABORTED: {run.ab['error'][:200]}"))
                    if not server.alive():
                        row.error = f"server died:\n{server.tail(1500)}"
                        break
                row.summary = summarize(row.runs)
                rows.append(row)
                if row.error:
                    return rows
    finally:
        server.stop()
    return rows
