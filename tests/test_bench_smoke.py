"""The benchmark runner must keep working: run ``python -m bench --smoke`` end to end.

Not a timed test: it asserts that every server served its requests without a failure and
that the report files were written, never a throughput figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("hello", "bridge", "flower", "ours")


@pytest.mark.timeout(600)
def test_bench_smoke_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path), "--stem", "smoke"],
        cwd=ROOT, capture_output=True, text=True, timeout=540,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, output

    data = json.loads((tmp_path / "smoke.json").read_text())
    assert (tmp_path / "smoke.md").read_text().startswith("# Benchmark results")
    assert (tmp_path / "smoke.png").stat().st_size > 0
    assert data["skipped"] == {}, output

    for server in SERVERS:
        rows = [r for r in data["rows"] if r["server"] == server]
        assert rows, f"no row for {server}\n{output}"
        for row in rows:
            summary = row["summary"]
            label = f"{server} {row['mode']}"
            assert not row["error"], f"{label}: {row['error']}"
            assert summary["complete"] > 0, f"{label}: nothing completed\n{output}"
            assert summary["failed"] == 0, f"{label}: {summary['failed']} failed\n{output}"
            assert summary["non_2xx"] == 0, f"{label}: {summary['non_2xx']} non-2xx\n{output}"

    for memory in (data["memory"], data["memory"]["floor"]):  # ours, then plain Tornado
        assert memory["waiting_reached"] == memory["requests"], memory
        assert memory["ok_200"] == memory["requests"], memory

    # The latency test: every server answered every request (no latency figure is checked).
    latency = data["latency"]
    assert {r["key"] for r in latency["results"]} == {
        "ours_rpc", "ours_redis", "bridge", "flower", "poll"}, latency
    for result in latency["results"]:
        assert result["ok"] == latency["requests"] and result["errors"] == 0, result

    # The event streams: every stream opened and got every event; the ceiling: every reply.
    streams = data["streams"]
    assert not streams["error"], streams["error"]
    assert streams["all_delivered"], streams
    ceiling = data["ceiling"]
    assert "error" not in ceiling and ceiling["replies"] == ceiling["tasks"], ceiling
