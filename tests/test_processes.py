"""More than one process (issue 12, part 5): ``tornado.process.fork_processes`` with one
producer per child, against the real broker and worker; and a producer carried across a fork
refuses to publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pika.exceptions import ChannelClosedByBroker

from tcelery_req_handler import ConfigurationError, Producer
from tests import worker_app
from tests.faults.http_load import HttpConnection, Response
from tests.workers import ROOT, CeleryWorker

CHILDREN = 2


class ForkServer:
    """``tests/fork_app.py`` running with its children, in a process group of its own."""

    def __init__(self, tmp_path: Path) -> None:
        port_file = tmp_path / "port"
        self.log_path = tmp_path / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fork_app", str(port_file), str(CHILDREN)], cwd=ROOT,
            stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"fork server did not start:\n{self.log()}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM to the group (the parent and its children: each child closes its
        producer); SIGKILL to the group if it has not exited within 15 s. Idempotent."""
        group = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break  # the parent and every child are gone
            self.proc.poll()  # reap the parent
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()


@pytest.fixture
def fork_server(tmp_path: Path, workers: dict[str, CeleryWorker]) -> Iterator[ForkServer]:
    server = ForkServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


async def _get(port: int, path: str) -> Response:
    conn = HttpConnection("127.0.0.1", port)
    try:
        return await conn.request("GET", path, timeout=30)
    finally:
        conn.close()


async def test_fork_processes_one_producer_per_child(fork_server: ForkServer) -> None:
    port = fork_server.port
    # a fresh connection per request: the kernel spreads them over the children
    responses: list[Response] = []
    for batch in range(5):
        responses += await asyncio.gather(*(_get(port, f"/add/{batch * 10 + i}/1")
                                            for i in range(10)))
    assert [r.status for r in responses] == [200] * 50, fork_server.log()
    assert [r.body for r in responses] == [str(n + 1).encode() for n in range(50)]
    pids = Counter(r.headers["x-pid"] for r in responses)
    assert len(pids) >= 2, pids
    # each child has its own reply queue, named after its pid and consumed by it alone
    queues = {r.headers["x-pid"]: r.headers["x-reply-queue"] for r in responses}
    assert len(set(queues.values())) == len(queues)
    for pid, queue in queues.items():
        assert f".{pid}." in queue, (pid, queue)
    from tests.conftest import blocking_connection

    conn = blocking_connection()
    try:
        channel = conn.channel()
        for queue in queues.values():
            ok = channel.queue_declare(queue, passive=True)
            assert ok.method.consumer_count == 1, queue
        # stopped, each child closes its producer: its reply queue is deleted
        await asyncio.to_thread(fork_server.stop)
        for queue in queues.values():
            channel = conn.channel()
            with pytest.raises(ChannelClosedByBroker) as refused:
                channel.queue_declare(queue, passive=True)
            assert refused.value.reply_code == 404, queue
    finally:
        conn.close()


def _use_in_child(producer: Producer, pipe: multiprocessing.connection.Connection) -> None:
    try:
        asyncio.run(producer.send_task("tests.worker_app.add", (1, 2), reply=False))
    except ConfigurationError as exc:
        pipe.send(("ConfigurationError", str(exc)))
    except BaseException as exc:
        pipe.send((type(exc).__name__, str(exc)))
    else:
        pipe.send(("sent", ""))
    pipe.close()


def test_a_producer_used_in_a_forked_child_refuses_with_a_clear_message(
        workers: dict[str, CeleryWorker]) -> None:
    loop = asyncio.new_event_loop()
    producer = Producer(worker_app.app, connect_timeout=5)
    try:
        loop.run_until_complete(producer.connect())  # the parent's connection
        context = multiprocessing.get_context("fork")
        parent_end, child_end = context.Pipe(duplex=False)
        child = context.Process(target=_use_in_child, args=(producer, child_end))
        child.start()
        try:
            assert parent_end.poll(20), "the child did not answer"
            kind, message = parent_end.recv()
        finally:
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join(5)
        assert kind == "ConfigurationError", (kind, message)
        assert f"set up in process {os.getpid()}" in message
        assert f"this is process {child.pid} (a fork)" in message
        assert "setup_nonblocking_producer()" in message and "fork_processes()" in message
        # the parent's producer is untouched and still works
        result = loop.run_until_complete(producer.send_task("tests.worker_app.add", (2, 3)))
        assert loop.run_until_complete(result.get(timeout=20)) == 5
    finally:
        loop.run_until_complete(producer.close())
        loop.close()
