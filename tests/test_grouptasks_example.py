"""Seed 002's system, for real: ``example/grouptasks.py`` and its worker as subprocesses,
driven with the seed's own curl commands, every field checked against the seed's README.

The worker is ``celery -A backend.grouptasks worker`` (from ``example/``, 0.2-0.6 s per task,
two pool processes so that a batch of four has visible intermediate states); the app is
``python grouptasks.py --port <free port>``. Both get a queue and a Redis key prefix of this
run's own, removed at the end with the processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests import group_app
from tests.workers import ROOT, CeleryWorker

EXAMPLE = ROOT / "example"
PREFIX = os.environ["TCELERY_TEST_PREFIX"]
QUEUE = f"{PREFIX}.grouptasks"
KEYPREFIX = f"{PREFIX}:grouptasks:"

#: The seed's POST body, as its README's curl command sends it.
SEED_BODY = ('{"tasks": [{"paramB" : 5, "paramA": 1}, {"paramB" : 10, "paramA": 9}, '
             '{"paramB" : 13, "paramA": 12}, {"paramB" : 1, "paramA": 8}]}')
SEED_RESULTS = [6, 19, 25, 9]
GROUP_FIELDS = {"groupTaskId", "grouptaskProcessed", "grouptaskSucceeded", "results",
                "tasksCompleted", "tasksTotal"}
TASK_FIELDS = {"result", "resultReady", "taskId", "taskState", "taskSucceeded"}


@dataclass
class Example:
    port: int
    worker: CeleryWorker
    server: subprocess.Popen[bytes]
    server_log: Path
    seed_runs: list[dict[str, Any]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://localhost:{self.port}{path}"


def curl(*args: str, timeout: float = 30) -> str:
    proc = subprocess.run(["curl", *args], capture_output=True, timeout=timeout, check=False)
    assert proc.returncode == 0, (args, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc.stdout.decode()


def curl_json(*args: str) -> Any:
    return json.loads(curl(*args))


def post_seed(example: Example, body: str = SEED_BODY) -> dict[str, Any]:
    """The seed's ``Create a GroupTask`` request, verbatim but for the port."""
    created = curl_json("-X", "POST", example.url("/grouptasks"), "-H",
                        "Content-type: application/json", "-d", body)
    assert set(created) == {"groupTaskId", "taskIds"}, created
    gid, ids = created["groupTaskId"], created["taskIds"]
    assert isinstance(gid, str) and str(uuid.UUID(gid)) == gid
    assert isinstance(ids, list) and len(ids) == len(json.loads(body)["tasks"])
    assert all(isinstance(t, str) and str(uuid.UUID(t)) == t for t in ids)
    assert len(set(ids)) == len(ids) and gid not in ids
    return created


def get_group(example: Example, gid: str) -> dict[str, Any]:
    """The seed's ``Get GroupTask-Result`` request; its fields and their types checked."""
    status = curl_json("-X", "GET", example.url(f"/grouptasks/{gid}"))
    check_group(status, gid)
    return status


def check_group(status: dict[str, Any], gid: str) -> None:
    assert set(status) == GROUP_FIELDS, status
    assert status["groupTaskId"] == gid
    for name in ("grouptaskProcessed", "grouptaskSucceeded"):
        assert isinstance(status[name], bool), status
    for name in ("tasksCompleted", "tasksTotal"):
        assert type(status[name]) is int, status
    assert isinstance(status["results"], list), status
    assert 0 <= status["tasksCompleted"] <= status["tasksTotal"]
    assert status["grouptaskProcessed"] is (status["tasksCompleted"] == status["tasksTotal"])


def get_task(example: Example, task_id: str) -> dict[str, Any]:
    """The seed's ``Get single Task-Result`` request."""
    status = curl_json("-X", "GET", example.url(f"/tasks/{task_id}"))
    assert set(status) == TASK_FIELDS, status
    assert status["taskId"] == task_id
    assert isinstance(status["resultReady"], bool) and isinstance(status["taskSucceeded"], bool)
    assert isinstance(status["taskState"], str)
    return status


def is_subsequence(part: list[Any], whole: list[Any]) -> bool:
    it = iter(whole)
    return all(any(x == y for y in it) for x in part)


def poll_until_processed(example: Example, gid: str, timeout: float = 20
                         ) -> list[dict[str, Any]]:
    """Every answer of the seed's polling loop ("groupTaskProcessed != True")."""
    snapshots = []
    deadline = time.monotonic() + timeout
    while True:
        snapshots.append(get_group(example, gid))
        if snapshots[-1]["grouptaskProcessed"]:
            return snapshots
        assert time.monotonic() < deadline, snapshots[-1]
        time.sleep(0.05)


def parse_sse(text: str) -> tuple[int | None, list[tuple[str, Any]]]:
    """``(retry, [(event, data JSON), ...])``; ids are checked to count from 1."""
    retry, events = None, []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.partition(": ")[::2] for line in block.split("\n")
                      if line and not line.startswith(":"))
        if "retry" in fields:
            retry = int(fields["retry"])
        elif fields:
            assert set(fields) == {"id", "event", "data"}, block
            assert fields["id"] == str(len(events) + 1)
            events.append((fields["event"], json.loads(fields["data"])))
    return retry, events


def cache_keys_for(body: str) -> set[bytes]:
    """The keys the example caches the batch's results under, derived (as the library does)
    from a Redis backend with the example's ``global_keyprefix``: Celery 5.3/5.4 put ``_``
    after it, 5.5+ not after one ending in ``:``."""
    like_the_example = Celery(backend=group_app.REDIS_URL, set_as_current=False)
    like_the_example.conf.result_backend_transport_options = {"global_keyprefix": KEYPREFIX}
    try:
        return {group_app.cache_key("grouptasks.add", [], item, like_the_example)
                for item in json.loads(body)["tasks"]}
    finally:
        like_the_example.close()


def accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Example]:
    env = {"BROKER_URL": os.environ["TCELERY_TEST_BROKER"],
           "RESULT_BACKEND": group_app.REDIS_URL, "GROUPTASKS_QUEUE": QUEUE,
           "GROUPTASKS_KEY_PREFIX": KEYPREFIX, "GROUPTASKS_DELAY": "0.2,0.6"}
    worker = CeleryWorker("backend.grouptasks", [QUEUE], f"grouptasks-{PREFIX}", cwd=EXAMPLE,
                          env=env, concurrency=2)
    log_path = tmp_path_factory.mktemp("grouptasks") / "grouptasks.log"
    server: subprocess.Popen[bytes] | None = None
    try:
        worker.start()
        port = free_port()
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "grouptasks.py", "--port", str(port)], cwd=EXAMPLE,
                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + 30
        while not accepts(port):
            if server.poll() is not None:
                raise RuntimeError(f"grouptasks.py exited with {server.returncode}:\n"
                                   f"{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"grouptasks.py not serving in 30 s:\n"
                                   f"{log_path.read_text()}")
            time.sleep(0.05)
        yield Example(port, worker, server, log_path)
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                assert server.wait(15) == 0, log_path.read_text()
            finally:
                if server.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(server.pid, signal.SIGKILL)
                    server.wait(10)
        worker.stop()
        group_app.delete_keys(KEYPREFIX)
        group_app.delete_queues(QUEUE)


@pytest.fixture(scope="module")
def seed_run(example: Example) -> dict[str, Any]:
    """The seed's usage, once: create the group task, poll it until processed. The first
    POST of the seed's batch in this run, whatever the order the tests run in."""
    created = post_seed(example)
    snapshots = poll_until_processed(example, created["groupTaskId"])
    return {"created": created, "snapshots": snapshots}


# ---------------------------------------------------------------------------------- tests
def test_the_seeds_curl_commands(example: Example, seed_run: dict[str, Any]) -> None:
    created, snapshots = seed_run["created"], seed_run["snapshots"]
    gid, ids = created["groupTaskId"], created["taskIds"]
    final = snapshots[-1]
    assert final == {"groupTaskId": gid, "grouptaskProcessed": True,
                     "grouptaskSucceeded": True, "results": SEED_RESULTS,
                     "tasksCompleted": 4, "tasksTotal": 4}
    assert all(type(r) is int for r in final["results"])
    # While it runs: not processed, the results of the finished tasks only, in order.
    running = snapshots[:-1]
    assert running and running[0]["tasksCompleted"] < 4  # 0.2-0.6 s a task: seen running
    for snapshot in running:
        assert snapshot["grouptaskProcessed"] is False
        assert snapshot["grouptaskSucceeded"] is True
        assert snapshot["tasksTotal"] == 4 and snapshot["tasksCompleted"] < 4
        assert len(snapshot["results"]) == snapshot["tasksCompleted"]
        assert is_subsequence(snapshot["results"], SEED_RESULTS), snapshot
    counts = [s["tasksCompleted"] for s in snapshots]
    assert counts == sorted(counts)
    assert any(0 < n < 4 for n in counts), counts  # two at a time: a partial state lasts
    # The seed's single-task request, for each member.
    for task_id, value in zip(ids, SEED_RESULTS, strict=True):
        task = get_task(example, task_id)
        assert task == {"result": value, "resultReady": True, "taskId": task_id,
                        "taskState": "SUCCESS", "taskSucceeded": True}
        assert type(task["result"]) is int
    # The worker really ran each of them.
    log = example.worker.log_path.read_text()
    assert all(f"grouptasks.add[{task_id}] succeeded" in log for task_id in ids)


def test_progress_over_sse_with_curl(example: Example) -> None:
    body = ('{"tasks": [{"paramB" : 3, "paramA": 2}, {"paramB" : 5, "paramA": 4}, '
            '{"paramB" : -1, "paramA": 100}]}')
    created = post_seed(example, body)
    gid, ids = created["groupTaskId"], created["taskIds"]
    pending = get_task(example, ids[2])  # third in line behind two pool processes
    assert pending["resultReady"] is False and pending["taskSucceeded"] is False
    assert pending["result"] is None and pending["taskState"] in ("PENDING", "STARTED")
    stream = curl("-N", example.url(f"/grouptasks/{gid}/events"))
    retry, events = parse_sse(stream)
    assert retry == 3000
    assert [name for name, _ in events] == ["progress"] * (len(events) - 1) + ["processed"]
    for _, data in events:
        check_group(data, gid)
        assert data["tasksTotal"] == 3 and len(data["results"]) == data["tasksCompleted"]
        assert is_subsequence(data["results"], [5, 9, 99])
    counts = [data["tasksCompleted"] for _, data in events]
    assert counts == sorted(counts) and len(set(counts)) >= 2, counts
    assert counts[0] < 3
    assert events[-1][1] == {"groupTaskId": gid, "grouptaskProcessed": True,
                             "grouptaskSucceeded": True, "results": [5, 9, 99],
                             "tasksCompleted": 3, "tasksTotal": 3}
    # a task's own stream, once it is done: one final event in the seed's names
    retry, events = parse_sse(curl("-N", example.url(f"/tasks/{ids[0]}/events")))
    assert retry == 3000
    assert events == [("SUCCESS", {"result": 5, "resultReady": True, "taskId": ids[0],
                                   "taskState": "SUCCESS", "taskSucceeded": True})]


def test_the_same_batch_again_comes_from_the_cache(example: Example,
                                                   seed_run: dict[str, Any]) -> None:
    first = seed_run["created"]
    keys = cache_keys_for(SEED_BODY)
    deadline = time.monotonic() + 10
    while not keys <= set(group_app.redis_client().scan_iter(match=f"{KEYPREFIX}*")):
        assert time.monotonic() < deadline, "the seed's four results never cached"
        time.sleep(0.05)
    again = post_seed(example)
    assert again["groupTaskId"] != first["groupTaskId"]
    assert not set(again["taskIds"]) & set(first["taskIds"])
    # Results are there at once: the first poll already answers processed.
    assert get_group(example, again["groupTaskId"]) == {
        "groupTaskId": again["groupTaskId"], "grouptaskProcessed": True,
        "grouptaskSucceeded": True, "results": SEED_RESULTS, "tasksCompleted": 4,
        "tasksTotal": 4}
    for task_id, value in zip(again["taskIds"], SEED_RESULTS, strict=True):
        assert get_task(example, task_id) == {"result": value, "resultReady": True,
                                              "taskId": task_id, "taskState": "SUCCESS",
                                              "taskSucceeded": True}
    # The response says where the results came from; no worker ever saw these tasks.
    head = curl("-s", "-i", "-X", "POST", example.url("/grouptasks"), "-H",
                "Content-type: application/json", "-d", SEED_BODY)
    assert "\r\nX-Cache: hit\r\n" in head and head.startswith("HTTP/1.1 202")
    time.sleep(0.3)
    log = example.worker.log_path.read_text()
    assert not any(task_id in log for task_id in again["taskIds"])
