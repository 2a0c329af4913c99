"""Run ApacheBench (``ab``) and parse its report into numbers.

The seed's published figures come from ``ab -n 1000 -c 500 <url>``; the runner uses the same
tool and flags so the numbers compare directly. Only ``-r`` (see :func:`command`), a time
limit (``-t``, placed before ``-n`` so ``-n`` still caps the count) and, for Flower's POST
endpoints, ``-p``/``-T`` are added.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class AbResult:
    """What one ``ab`` run reports; ``ok`` is False when ab aborted or printed no summary."""

    requests: int
    concurrency: int
    complete: int = 0
    failed: int = 0
    failed_breakdown: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0
    write_errors: int = 0
    rps: float = 0.0
    seconds: float = 0.0
    document_length: int = 0
    percentiles_ms: dict[int, float] = field(default_factory=dict)
    ok: bool = False
    error: str = ""

    @property
    def p50_ms(self) -> float | None:
        return self.percentiles_ms.get(50)

    @property
    def p99_ms(self) -> float | None:
        return self.percentiles_ms.get(99)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["percentiles_ms"] = {str(k): v for k, v in self.percentiles_ms.items()}
        return data


_FIELDS: dict[str, tuple[str, type]] = {
    "complete": (r"^Complete requests:\s+(\d+)", int),
    "failed": (r"^Failed requests:\s+(\d+)", int),
    "non_2xx": (r"^Non-2xx responses:\s+(\d+)", int),
    "write_errors": (r"^Write errors:\s+(\d+)", int),
    "rps": (r"^Requests per second:\s+([\d.]+)", float),
    "seconds": (r"^Time taken for tests:\s+([\d.]+)", float),
    "document_length": (r"^Document Length:\s+(\d+)", int),
}
_BREAKDOWN = re.compile(r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)")
_PERCENTILE = re.compile(r"^\s*(\d+)%\s+(\d+)", re.MULTILINE)


def parse(output: str, requests: int, concurrency: int) -> AbResult:
    """Parse ab's text report; fields ab leaves out (``Non-2xx`` when zero) stay 0."""
    result = AbResult(requests=requests, concurrency=concurrency)
    for name, (pattern, kind) in _FIELDS.items():
        match = re.search(pattern, output, re.MULTILINE)
        if match:
            setattr(result, name, kind(match.group(1)))
    breakdown = _BREAKDOWN.search(output)
    if breakdown:
        result.failed_breakdown = dict(zip(("connect", "receive", "length", "exceptions"),
                                           map(int, breakdown.groups()), strict=True))
    if "Percentage of the requests served" in output:
        tail = output.split("Percentage of the requests served", 1)[1]
        result.percentiles_ms = {int(p): float(ms) for p, ms in _PERCENTILE.findall(tail)}
    result.ok = "Requests per second" in output
    return result


def command(url: str, requests: int, concurrency: int, *, time_limit: float,
            post_file: Path | None = None) -> list[str]:
    """The ab command line: the seed's ``-n N -c C`` plus a time limit (and a POST body).

    ``-r``: a socket error counts as a failed request (shown in the table) instead of
    aborting the whole run, which ab otherwise does on the first connection reset.

    No ``-l``: ab's length check stays on. Every endpoint's body has a constant length (the
    user list is seeded once and never changes during a run; task ids are all 36 characters),
    so a "Length" failure means a wrong body: another worker answered, or an error came
    with a 2xx status. That check is how cross-talk between concurrent runs was found.
    """
    argv = ["ab", "-r", "-t", str(int(time_limit)), "-n", str(requests), "-c", str(concurrency)]
    if post_file is not None:
        argv += ["-p", str(post_file), "-T", "application/json"]
    return [*argv, url]


def run(url: str, requests: int, concurrency: int, *, time_limit: float,
        post_file: Path | None = None) -> AbResult:
    """Run ab once, bounded by ``time_limit`` (ab's own ``-t``, and a hard kill after it)."""
    argv = command(url, requests, concurrency, time_limit=time_limit, post_file=post_file)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=time_limit + 60)
    except subprocess.TimeoutExpired as exc:
        result = AbResult(requests=requests, concurrency=concurrency)
        result.error = f"ab did not finish within {time_limit + 60:g}s: {exc}"
        return result
    result = parse(proc.stdout, requests, concurrency)
    if proc.returncode != 0 or not result.ok:
        result.ok = False
        result.error = (proc.stderr.strip() or proc.stdout.strip())[-500:]
    return result
