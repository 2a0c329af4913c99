"""``--profile``: record our web server with py-spy during a run, and summarize the samples.

For each endpoint of ``ours``, the first run of each profile is recorded:
``profile-<profile>-ours-<mode>.txt`` holds py-spy's collapsed stacks (open it in
speedscope.app or feed it to flamegraph.pl), ``...-summary.txt`` the functions with the most
samples, self and inclusive, idle waits left out. py-spy samples from outside the process
(ptrace); at 100 Hz its cost is small, but it is only on when asked for
(``pip install py-spy``).
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

#: Leaf frames that mean "waiting", not "working": the event loop's select, idle threads.
IDLE_LEAVES = ("select (selectors.py", "_worker (concurrent/futures/thread.py",
               "wait (threading.py")


def available() -> bool:
    return shutil.which("py-spy") is not None


@contextlib.contextmanager
def record(pid: int, raw_path: Path, rate: int = 100) -> Iterator[None]:
    """Run ``py-spy record --format raw`` on ``pid`` for the duration of the block."""
    proc = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", str(rate),
                             "--format", "raw", "--output", str(raw_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _label(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1]})" if where else name


def summarize(raw_path: Path, top: int = 40) -> str:
    """The busiest functions in a py-spy raw file, as % of non-idle samples."""
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = active = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        total += n
        if any(marker in frames[-1] for marker in IDLE_LEAVES):
            continue
        active += n
        self_counts[_label(frames[-1])] += n
        for name in {_label(f) for f in frames}:
            inclusive[name] += n
    if not active:
        return f"{raw_path.name}: no active samples ({total} in all)\n"
    out = [f"{raw_path.name}: {total} samples, {active} active "
           f"({100 * active / total:.0f}%); percentages of active samples", "", "self:"]
    out += [f"  {100 * n / active:5.1f}%  {name}" for name, n in self_counts.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"  {100 * n / active:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out) + "\n"

