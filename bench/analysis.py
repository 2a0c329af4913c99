"""Ratios of ours to each peer and to hello world, and the issue's targets checked against them.

Pure functions of the result rows (dicts, as in the JSON), so the report and any later
re-analysis of a saved ``latest.json`` compute the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bench.lineup import BOUND, FIRE_AND_FORGET, WAITING

#: The original's published ``ab -n 1000 -c 500`` figures (seed README), req/s.
SEED_RPS = {WAITING: 53.87, FIRE_AND_FORGET: 347.82}
PEERS = ("bridge", "flower")
#: The issue's limit on RSS per waiting request ("at most 10 KB"), read as 10,000 bytes.
MEMORY_LIMIT_BYTES = 10_000

Rows = Iterable[Mapping[str, Any]]


def _summary(rows: Rows, server: str, mode: str, profile: str) -> Mapping[str, Any] | None:
    for row in rows:
        if (row["server"], row["mode"], row["profile"]) == (server, mode, profile):
            return row["summary"] or None
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def profiles(rows: Rows) -> list[str]:
    seen: list[str] = []
    for row in rows:
        if row["profile"] not in seen:
            seen.append(row["profile"])
    return seen


def ratios(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per profile and mode: ours' req/s over each peer's and over hello world's, and ours'
    web CPU per request over hello world's."""
    out: list[dict[str, Any]] = []
    for profile in profiles(rows):
        hello = _summary(rows, "hello", BOUND, profile) or {}
        for mode in (WAITING, FIRE_AND_FORGET):
            ours = _summary(rows, "ours", mode, profile)
            if ours is None:
                continue
            entry: dict[str, Any] = {"profile": profile, "mode": mode}
            for peer in PEERS:
                other = _summary(rows, peer, mode, profile) or {}
                entry[f"rps_vs_{peer}"] = _ratio(ours["rps_median"], other.get("rps_median"))
            entry["rps_vs_hello"] = _ratio(ours["rps_median"], hello.get("rps_median"))
            entry["rps_vs_seed"] = _ratio(ours["rps_median"], SEED_RPS[mode])
            entry["cpu_vs_hello"] = _ratio(ours["web_cpu_ms_per_req"],
                                           hello.get("web_cpu_ms_per_req"))
            out.append(entry)
    return out


def cpu_budget(rows: Sequence[Mapping[str, Any]], profile: str,
               cores: int) -> list[dict[str, Any]]:
    """Per row of ``profile``: CPU ms per request in the web process, the worker and RabbitMQ,
    their sum, and the req/s that sum allows if the machine's cores did nothing else.

    On a small machine this ceiling, not the web server, is what caps the waiting routes:
    it tells whether a req/s target is reachable at all with this worker and broker.
    """
    out = []
    for row in rows:
        s = row["summary"]
        if row["profile"] != profile or not s or row["mode"] == BOUND:
            continue
        parts = [s.get(k) for k in ("web_cpu_ms_per_req", "worker_cpu_ms_per_req",
                                    "broker_cpu_ms_per_req")]
        total = round(sum(p for p in parts if p is not None), 3)
        out.append({"server": row["server"], "label": row["label"], "mode": row["mode"],
                    "web": parts[0], "worker": parts[1], "broker": parts[2], "total": total,
                    "ceiling_rps": round(cores * 1000 / total) if total else None})
    return out


def _check(name: str, value: float | None, op: str, limit: float, unit: str = "") -> dict[str, Any]:
    holds = None if value is None else (value >= limit if op == ">=" else value <= limit)
    return {"target": name, "value": value, "required": f"{op} {limit:g}{unit}", "holds": holds}


def targets(rows: Sequence[Mapping[str, Any]], memory: Mapping[str, Any] | None,
            profile: str) -> list[dict[str, Any]]:
    """The issue's targets for one profile (medians), each with its value and verdict."""
    checks: list[dict[str, Any]] = []
    by_mode = {r["mode"]: r for r in ratios(rows) if r["profile"] == profile}
    for mode, floor, seed_x, bridge_x, flower_x, cpu_x in (
            (WAITING, 800, 15, 2, 3, 2.0), (FIRE_AND_FORGET, 1400, 4, 2, 5, 1.6)):
        ours = _summary(rows, "ours", mode, profile)
        if ours is None:
            continue
        ratio = by_mode.get(mode, {})
        checks += [
            _check(f"{mode}: req/s", ours["rps_median"], ">=", floor),
            _check(f"{mode}: x seed ({SEED_RPS[mode]} req/s)", ratio.get("rps_vs_seed"),
                   ">=", seed_x, "x"),
            _check(f"{mode}: x bridge", ratio.get("rps_vs_bridge"), ">=", bridge_x, "x"),
            _check(f"{mode}: x Flower", ratio.get("rps_vs_flower"), ">=", flower_x, "x"),
            _check(f"{mode}: web CPU/req vs hello world's", ratio.get("cpu_vs_hello"),
                   "<=", cpu_x, "x"),
            _check(f"{mode}: failed requests at -c {_concurrency(rows, profile)}",
                   ours["failed"] + ours["non_2xx"], "<=", 0),
        ]
    if memory and memory.get("rss_per_request"):
        checks.append(_check("memory: RSS per waiting request (bytes)",
                             round(memory["rss_per_request"]), "<=", MEMORY_LIMIT_BYTES))
    return checks


def _concurrency(rows: Rows, profile: str) -> int:
    for row in rows:
        if row["profile"] == profile:
            return int(row["concurrency"])
    return 0
