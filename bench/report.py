"""Write a run's results: ``latest.json`` (everything), ``latest.md`` (tables), ``latest.png``.

The Markdown is what the README's "Benchmarks" section quotes; the JSON is what the smoke
test and any re-analysis read; the chart shows req/s (median, min-max bars) and web CPU per
request for every server and mode, with the seed's published numbers as reference lines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import analysis
from bench.lineup import BOUND, FIRE_AND_FORGET, WAITING

MODE_LABEL = {WAITING: "waiting", FIRE_AND_FORGET: "fire and forget", BOUND: "no task (bound)"}
SHORT_MODE = {WAITING: "waiting", FIRE_AND_FORGET: "fire+forget", BOUND: "no task"}
SERVER_ORDER = ("hello", "bridge", "flower", "ours")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


def _sorted_rows(rows: Sequence[Mapping[str, Any]], profile: str) -> list[Mapping[str, Any]]:
    mine = [r for r in rows if r["profile"] == profile]
    order = {k: i for i, k in enumerate(SERVER_ORDER)}
    modes = {BOUND: 0, WAITING: 1, FIRE_AND_FORGET: 2}
    return sorted(mine, key=lambda r: (modes.get(r["mode"], 9), order.get(r["server"], 9)))


def throughput_table(rows: Sequence[Mapping[str, Any]], profile: str) -> list[str]:
    header = ["server", "mode", "req/s (median)", "min", "max", "complete", "failed",
              "non-2xx", "p50 ms", "p99 ms", "web peak RSS MB", "web CPU ms/req",
              "worker CPU ms/req", "broker CPU ms/req", "listen drops", "other load %",
              "body bytes"]
    lines = []
    for row in _sorted_rows(rows, profile):
        s = row["summary"]
        name = f"**{row['label']}**" if row["server"] == "ours" else row["label"]
        if not s:
            lines.append([name, MODE_LABEL.get(row["mode"], row["mode"]),
                          f"error: {row['error'][:80]}", *["—"] * 14])
            continue
        lines.append([name, MODE_LABEL.get(row["mode"], row["mode"]),
                      _fmt(s["rps_median"]), _fmt(s["rps_min"]), _fmt(s["rps_max"]),
                      _fmt(s["complete"]), _fmt(s["failed"]), _fmt(s["non_2xx"]),
                      _fmt(s["p50_ms"], 0), _fmt(s["p99_ms"], 0), _fmt(s["peak_rss_mb"]),
                      _fmt(s["web_cpu_ms_per_req"], 2), _fmt(s["worker_cpu_ms_per_req"], 2),
                      _fmt(s.get("broker_cpu_ms_per_req"), 2),
                      _fmt(s.get("listen_overflows"), 0), _fmt(s.get("other_load_pct")),
                      _fmt(s["document_length"])])
    return _table(header, lines)


def ratio_table(ratios: Sequence[Mapping[str, Any]]) -> list[str]:
    header = ["profile", "mode", "ours / bridge", "ours / Flower", "ours / hello world",
              "ours / seed", "web CPU per req: ours / hello world"]
    lines = [[r["profile"], MODE_LABEL[r["mode"]], *(_fmt(r[k], 2) + ("x" if r[k] else "")
                                                       for k in ("rps_vs_bridge", "rps_vs_flower",
                                                                 "rps_vs_hello", "rps_vs_seed",
                                                                 "cpu_vs_hello"))]
             for r in ratios]
    return _table(header, lines)


def budget_table(budget: Sequence[Mapping[str, Any]], cores: int) -> list[str]:
    header = ["server", "mode", "web", "worker", "broker", "total CPU ms/req",
              f"sustained req/s ceiling, {cores} cores"]
    return _table(header, [[b["label"], MODE_LABEL[b["mode"]], _fmt(b["web"], 2),
                            _fmt(b["worker"], 2), _fmt(b["broker"], 2), _fmt(b["total"], 2),
                            _fmt(b["ceiling_rps"])] for b in budget])


def memory_lines(memory: Mapping[str, Any] | None) -> list[str]:
    if not memory:
        return ["Not run."]
    if memory.get("skipped"):
        return [f"Skipped: {memory['skipped']}"]
    mb = 2**20
    lines = [
        f"One Tornado process of ours (`bench/servers/ours_hold.py`, `tcelery_routes` on "
        f"`bench.hold`) held **{memory['waiting_reached']:,}** of {memory['requests']:,} "
        f"requests waiting at once (the producer's pending results).",
        "",
        f"- RSS before: {memory['baseline_rss'] / mb:.1f} MB; while holding: "
        f"{memory['holding_rss'] / mb:.1f} MB",
        f"- **RSS per waiting request: {memory['rss_per_request'] / 1000:.1f} KB** "
        f"({memory['rss_per_request']:,.0f} bytes)",
        f"- after release: {memory['ok_200']:,} answered 200, {memory['errors']:,} did not; "
        f"opening took {memory['connect_s']} s, draining {memory['release_s']} s",
    ]
    if memory.get("error"):
        lines.append(f"- error: {memory['error']}")
    floor = memory.get("floor")
    if floor and floor.get("rss_per_request"):
        lines += [
            "",
            f"Control: plain Tornado (`bench/servers/tornado_hold.py`, a handler awaiting an "
            f"`asyncio.Event`, no Celery) held {floor['waiting_reached']:,} requests with "
            f"**{floor['rss_per_request'] / 1000:.1f} KB** per waiting request "
            f"({floor['ok_200']:,} answered 200): the floor any Tornado handler pays. "
            f"Ours needs {(memory['rss_per_request'] - floor['rss_per_request']) / 1000:.1f} "
            "KB more per request.",
        ]
        if floor.get("error"):
            lines.append(f"- control error: {floor['error']}")
    return lines


def _from(data: Mapping[str, Any], part: str) -> list[str]:
    """A line saying a part's figures come from an earlier run (``--only``), if they do."""
    origin = (data["meta"].get("carried_over") or {}).get(part)
    if not origin:
        return []
    machine = origin.get("machine") or {}
    on = (f" on {machine.get('nproc')} CPUs ({machine.get('cpu_model')}), load average at "
          f"start {machine.get('load_avg_at_start')}" if machine else "")
    return [f"*From the earlier run of {origin.get('started')} (`{origin.get('command')}`)"
            f"{on}, kept by `--only`: compare with this run's figures with care.*", ""]


def ceiling_lines(data: Mapping[str, Any]) -> list[str]:
    c = data.get("ceiling") or {}
    if not c or c.get("skipped"):
        return [f"Skipped: {c.get('skipped', 'not run')}"]
    lines = [
        f"The shared worker drained **{c.get('replies', 0):,}** of {c['tasks']:,} pre-queued "
        f"`{c['task']}` tasks (rpc:// replies to one reply queue, no web server) at "
        f"**{_fmt(c.get('ceiling_rps'))} tasks/s** (first reply to last; "
        f"{_fmt(c.get('rps_from_start'))}/s counted from the `add_consumer` call, "
        f"{c.get('first_reply_s')} s to the first reply). Failed: {c.get('failed', 0)}, "
        f"missing: {c.get('missing', 0)}. Other load (processes outside the benchmark): "
        f"{_fmt(c.get('other_load_pct'))}%.",
        "",
        f"CPU per task: worker {_fmt(c.get('worker_cpu_ms_per_task'), 2)} ms, RabbitMQ + Redis "
        f"{_fmt(c.get('broker_cpu_ms_per_task'), 2)} ms, the reply consumer (the runner, the "
        f"library's producer) {_fmt(c.get('consumer_cpu_ms_per_task'), 2)} ms.",
        "",
    ]
    if c.get("error"):
        lines += [f"- error: {c['error']}", ""]
    fractions = [f for f in data.get("ceiling_fractions") or [] if f["mode"] == WAITING]
    if fractions:
        order = {k: i for i, k in enumerate(SERVER_ORDER)}
        profiles = {p: i for i, p in enumerate(analysis.profiles(data.get("rows") or []))}
        fractions.sort(key=lambda f: (profiles.get(f["profile"], 9), order.get(f["server"], 9)))
        lines += ["Each server's waiting req/s (ab table, median) as a fraction of that "
                  "ceiling:", ""]
        lines += _table(["profile", "server", "waiting req/s", "ceiling tasks/s",
                         "fraction of the ceiling"],
                        [[f["profile"], f"**{f['label']}**" if f["server"] == "ours"
                          else f["label"], _fmt(f["rps"]), _fmt(c.get("ceiling_rps")),
                          f"{f['fraction'] * 100:.0f}%" if f["fraction"] else "—"]
                         for f in fractions])
    return lines


def latency_lines(lat: Mapping[str, Any] | None) -> list[str]:
    if not lat or lat.get("skipped"):
        return [f"Skipped: {(lat or {}).get('skipped', 'not run')}"]
    ratios = {r["key"]: r for r in lat.get("ratios", [])}
    lines = [f"{lat['requests']} requests one after another per server (after "
             f"{lat['warmup']} unrecorded), a new connection each; the task sleeps "
             f"{lat['task_sleep_ms']} ms in the worker and returns when its body started and "
             "ended. Added = end-to-end - the task's own run time (measured in the worker), "
             "per request, then the percentiles.", ""]
    rows = []
    for r in lat["results"]:
        label = f"**{r['label']}**" if r["key"].startswith("ours") else r["label"]
        if not r.get("ok"):
            rows.append([label, "0", _fmt(r.get("errors")), *["—"] * 8])
            continue
        a, e, t = r["added_ms"], r["e2e_ms"], r["task_ms"]
        q = ratios.get(r["key"], {})
        rows.append([label, _fmt(r["ok"]), _fmt(r["errors"]), _fmt(a["p50"], 2),
                     _fmt(a["p99"], 2), _fmt(a["max"], 1), _fmt(e["p50"], 1),
                     _fmt(t["p50"], 1),
                     _fmt(q.get("p50_vs_ours_rpc"), 2) + "x" if q.get("p50_vs_ours_rpc")
                     else "—",
                     _fmt(q.get("p99_vs_ours_rpc"), 2) + "x" if q.get("p99_vs_ours_rpc")
                     else "—", _fmt(r.get("other_load_pct"))])
    lines += _table(["server", "ok", "errors", "added p50 ms", "added p99 ms", "added max ms",
                     "end-to-end p50 ms", "task run p50 ms", "p50 / ours rpc",
                     "p99 / ours rpc", "other load %"], rows)
    errors = [(r["key"], r.get("error") or "; ".join(r.get("first_errors") or []))
              for r in lat["results"] if r.get("errors")]
    lines += [""] + [f"- {k}: {msg[:300]}" for k, msg in errors if msg]
    return lines


def streams_lines(st: Mapping[str, Any] | None) -> list[str]:
    if not st or st.get("skipped"):
        return [f"Skipped: {(st or {}).get('skipped', 'not run')}"]
    client = st.get("client") or {}
    if not client:
        return [f"Error: {st.get('error', 'no client result')}"]
    mb = 2**20
    delay = client.get("delay_ms") or {}
    lines = [
        f"One Tornado process of ours (`bench/servers/ours_results.py --results redis`, "
        f"`tcelery_status_routes`) held **{client['first_events']:,}** of {st['streams']:,} "
        f"`GET /tasks/<id>/events` streams open at once ({st['tasks']} tasks x "
        f"{st['per_task']} streams each; client: `bench/sse_client.py`, a separate process, "
        "raw asyncio sockets). Each task (`bench.progress`) sent "
        f"{st['steps']} PROGRESS states {st['interval_s']} s apart, then SUCCESS; the worker "
        "ran two at a time.",
        "",
        f"- RSS before: {st['baseline_rss'] / mb:.1f} MB; with every stream open: "
        f"{st['open_rss'] / mb:.1f} MB ({st.get('server_fds', 0):,} open fds)",
        f"- **RSS per open stream: {st['rss_per_stream'] / 1000:.1f} KB** "
        f"({st['rss_per_stream']:,.0f} bytes)",
        f"- events: **{client['events']:,} received of {st['expected_events']:,} expected** "
        f"({st['expected_events_per_stream']} per stream: PENDING, {st['steps']} PROGRESS, "
        f"SUCCESS); streams closed by the server after SUCCESS: {client['completed']:,}; "
        f"events per stream -> streams: {client.get('per_stream')}; all delivered: "
        f"{_fmt(bool(st.get('all_delivered')))}",
        f"- delay from the worker's `time.time()` in the event to the client reading it, over "
        f"{client.get('delays_counted', 0):,} PROGRESS and SUCCESS events: **p50 "
        f"{_fmt(delay.get('p50'), 1)} ms, p99 {_fmt(delay.get('p99'), 1)} ms**, max "
        f"{_fmt(delay.get('max'), 1)} ms",
        f"- opening all streams took {client.get('connect_s')} s; the events "
        f"{st.get('events_s')} s; server CPU {_fmt(st.get('server_cpu_ms_per_event'), 3)} ms "
        f"per event delivered; other load (processes outside the benchmark) "
        f"{_fmt(st.get('other_load_pct'))}%",
    ]
    if client.get("errors"):
        lines.append(f"- client errors: {client['errors']} ({'; '.join(client['error_samples'])})")
    if st.get("error"):
        lines.append(f"- error: {st['error'][:500]}")
    return lines


def target_table(checks: Sequence[Mapping[str, Any]]) -> list[str]:
    return _table(["target", "measured", "required", "holds"],
                  [[c["target"], _fmt(c["value"], 2), c["required"], _fmt(c["holds"])]
                   for c in checks])


def markdown(data: Mapping[str, Any]) -> str:
    meta, rows = data["meta"], data["rows"]
    machine, versions = meta["machine"], meta["versions"]
    out = [
        "# Benchmark results" + (" (smoke run: tiny, not for comparison)" if meta["smoke"] else ""),
        "",
        *(["ours was recorded by py-spy during the first run of each profile (`--profile`): "
           "its CPU figures include the sampling overhead.", ""] if meta.get("profiled") else []),
        f"`{meta['command']}`, {meta['started']} ({meta['duration_s']:.0f} s).",
        "",
        f"Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), {machine['ram_gib']} GiB RAM, "
        f"{machine['os']}; load average at start {machine['load_avg_at_start']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
    ]
    out += _from(data, "ab")
    for profile in analysis.profiles(rows):
        spec = next(r for r in rows if r["profile"] == profile)
        runs = max((r["summary"].get("runs", 0) for r in rows if r["profile"] == profile),
                   default=0)
        out += [f"## `ab -n {spec['requests']} -c {spec['concurrency']}` ({profile}; "
                f"median of {runs} run{'s' if runs != 1 else ''})", ""]
        out += [*throughput_table(rows, profile), ""]
        budget = analysis.cpu_budget(rows, profile, machine["nproc"])
        if budget:
            out += [f"CPU per request ({profile}): where it goes, and the sustained req/s it "
                    "allows if nothing else ran (ab's own CPU not counted). A fire-and-forget "
                    "burst can beat that ceiling: the worker drains the queue after ab ends.",
                    "",
                    *budget_table(budget, machine["nproc"]), ""]
    if data["ratios"]:
        out += ["## Ratios (median req/s)", "", *ratio_table(data["ratios"]), ""]
    if data.get("ceiling"):
        out += ["## Worker-bound ceiling: tasks drained with no web server", "",
                *_from(data, "ceiling"), *ceiling_lines(data), ""]
    out += ["## Memory: 10,000 waiting requests" if not meta["smoke"] else "## Memory", ""]
    out += [*_from(data, "memory"), *memory_lines(data.get("memory")), ""]
    if data.get("latency"):
        out += ["## Latency a waiting request adds to its task, concurrency 1", "",
                *_from(data, "latency"), *latency_lines(data.get("latency")), ""]
    if data.get("streams"):
        st = data["streams"]
        out += [f"## Event streams: {st.get('streams', 0):,} open at once, Redis results", "",
                *_from(data, "streams"), *streams_lines(st), ""]
    for profile, checks in data["targets"].items():
        if checks:
            out += [f"## Targets of issue 4 ({profile})", "", *target_table(checks), ""]
    if data.get("skipped"):
        out += ["## Skipped", ""] + [f"- {k}: {v}" for k, v in data["skipped"].items()] + [""]
    out += ["## How this was measured", ""] + [f"- {note}" for note in meta["notes"]] + [""]
    return "\n".join(out)


def chart(data: Mapping[str, Any], path: Path) -> None:
    """req/s (median bars, min-max whiskers) and web CPU ms/request, one column per profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    profs = analysis.profiles(rows)
    fig, axes = plt.subplots(2, max(1, len(profs)), figsize=(6.5 * max(1, len(profs)), 8),
                             squeeze=False)
    colors = {"hello": "#999999", "bridge": "#e69f00", "flower": "#56b4e9", "ours": "#009e73"}
    for col, profile in enumerate(profs):
        mine = [r for r in _sorted_rows(rows, profile) if r["summary"]]
        labels = [f"{r['server']}\n{SHORT_MODE[r['mode']]}" for r in mine]
        x = list(range(len(mine)))
        med = [r["summary"]["rps_median"] or 0 for r in mine]
        low = [m - (r["summary"]["rps_min"] or m) for m, r in zip(med, mine, strict=True)]
        high = [(r["summary"]["rps_max"] or m) - m for m, r in zip(med, mine, strict=True)]
        color = [colors.get(r["server"], "#333333") for r in mine]
        ax = axes[0][col]
        ax.bar(x, med, yerr=[low, high], color=color, capsize=4)
        for mode, style in ((WAITING, ":"), (FIRE_AND_FORGET, "--")):
            ax.axhline(analysis.SEED_RPS[mode], color="#cc0000", linestyle=style, linewidth=1,
                       label=f"seed, {MODE_LABEL[mode]} ({analysis.SEED_RPS[mode]})")
        ax.set_title(f"req/s, ab -n {mine[0]['requests'] if mine else '?'} "
                     f"-c {mine[0]['concurrency'] if mine else '?'} ({profile})")
        ax.set_xticks(x, labels, fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        cpu_ax = axes[1][col]
        cpu_ax.bar(x, [r["summary"]["web_cpu_ms_per_req"] or 0 for r in mine], color=color)
        cpu_ax.set_title("web process CPU ms per request (lower is better)")
        cpu_ax.set_xticks(x, labels, fontsize=8)
        cpu_ax.grid(axis="y", alpha=0.3)
    machine = data["meta"]["machine"]
    fig.suptitle(f"tcelery-req-handler vs peers — {machine['nproc']} CPUs "
                 f"{machine['cpu_model']}" + (" — SMOKE RUN" if data["meta"]["smoke"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(data: dict[str, Any], out_dir: Path, stem: str = "latest") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(data, indent=1) + "\n")
    paths["md"].write_text(markdown(data))
    chart(data, paths["png"])
    return paths
