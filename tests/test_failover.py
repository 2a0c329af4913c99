"""Several broker nodes and quorum queues (issue 12, parts 3 and 5), against real brokers and
real workers.

Two private RabbitMQ nodes, A and B (``tests.faults.rabbit_node``), each with its own
``celery worker``; the producer gets both as Celery's failover URLs (``"amqp://A;amqp://B"``
in the app's ``broker_url``). Node A is stopped while fire-and-forget requests flow through a
real Tornado server: the producer moves to B (requests meanwhile may get 503, never hang),
and once A is back its worker runs what A held, so every confirmed task ran.

The quorum tests use node B: a queue declared as quorum by the worker first or by the
producer first, each side as Celery would, with no PRECONDITION_FAILED either way.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import celery
import pytest
import redis
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application

from tcelery_req_handler import (
    Producer,
    TCeleryNotFoundHandler,
    routes,
    tcelery_async_routes,
    tcelery_routes,
)
from tcelery_req_handler.transports.amqp import AmqpTransport
from tests.faults import fault_app
from tests.faults.common import PREFIX
from tests.faults.fault_app import ADD, RECORD, SLEEP
from tests.faults.http_load import HttpConnection
from tests.faults.rabbit_node import RabbitNode
from tests.quorum_app import configure
from tests.workers import CeleryWorker

pytest_plugins = ["tests.faults.fixtures"]

FAILOVER_QUEUE = f"{PREFIX}.failover"


def _in_parallel(*calls: Callable[[], object]) -> None:
    """Run blocking start/stop calls at once (a node takes ~8 s to start), re-raising."""
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]


def _worker(node: RabbitNode, queue: str, name: str, *, app: str = "tests.faults.fault_app",
            env: dict[str, str] | None = None) -> CeleryWorker:
    return CeleryWorker(
        app, [queue], f"{name}-{PREFIX}", concurrency=2,
        env={"TCELERY_FAULT_BROKER": node.url, "TCELERY_TEST_BROKER": node.url,
             "TCELERY_FAULT_QUEUE": queue, "TCELERY_FAULT_REDIS": fault_app.REDIS_URL,
             **(env or {})})


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[RabbitNode, RabbitNode]]:
    a, b = RabbitNode(), RabbitNode()
    try:
        _in_parallel(a.start, b.start)
        yield a, b
    finally:
        _in_parallel(a.destroy, b.destroy)


@pytest.fixture(scope="module")
def failover_workers(nodes: tuple[RabbitNode, RabbitNode]) -> Iterator[list[CeleryWorker]]:
    """One worker per node, each on its own node only (a worker with Celery's failover URLs
    would stay on B once A is back, and never drain A)."""
    workers = [_worker(node, FAILOVER_QUEUE, f"fo{i}") for i, node in enumerate(nodes)]
    try:
        _in_parallel(*(w.start for w in workers))
        yield workers
    finally:
        _in_parallel(*(w.stop for w in workers))


class Server:
    """A real Tornado server in the test's loop: fire-and-forget and waiting routes."""

    def __init__(self, producer: Producer) -> None:
        common = {"producer": producer, "queue": FAILOVER_QUEUE}
        rules = routes(
            tcelery_async_routes(r"/record/(?P<key>[^/]+)/(?P<token>[^/]+)",
                                 get_tasks=[RECORD], **common),
            tcelery_routes(r"/add/(\d+)/(\d+)", get_tasks=[ADD], timeout=15, **common),
            tcelery_routes(r"/sleep/([\d.]+)", get_tasks=[SLEEP], timeout=15, **common),
        )
        sock, self.port = bind_unused_port()
        self.server = HTTPServer(Application(rules,
                                             default_handler_class=TCeleryNotFoundHandler))
        self.server.add_sockets([sock])

    async def get(self, path: str, timeout: float = 20.0) -> tuple[int, bytes, float]:
        conn = HttpConnection("127.0.0.1", self.port)
        try:
            response = await conn.request("GET", path, timeout=timeout)
        finally:
            conn.close()
        return response.status, response.body, response.elapsed

    async def close(self) -> None:
        self.server.stop()
        await self.server.close_all_connections()


@dataclass
class Hit:
    token: str
    status: int = 0
    elapsed: float = 0.0
    node: int = -1  # the producer's node when the answer came


async def _wait_until(predicate: Callable[[], bool], timeout: float, what: str,
                      poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(poll)


async def test_failover_moves_to_the_next_node_and_loses_no_confirmed_task(
        nodes: tuple[RabbitNode, RabbitNode], failover_workers: list[CeleryWorker],
        redis_set: tuple[redis.Redis, str]) -> None:
    a, b = nodes
    client, key = redis_set
    app = fault_app.make_app(f"{a.url};{b.url}", FAILOVER_QUEUE)
    producer = Producer(app, publish_timeout=2, connect_timeout=2, reconnect_max_delay=0.5,
                        result_timeout=15)
    transport = producer.transport
    assert isinstance(transport, AmqpTransport) and len(transport.nodes) == 2
    server = Server(producer)
    hits: list[Hit] = []
    stop = asyncio.Event()
    phase = {"name": "a"}

    async def stream(n: int) -> None:
        for i in range(100_000):
            if stop.is_set():
                return
            hit = Hit(f"{phase['name']}-{n}-{i}")
            hits.append(hit)
            hit.status, _body, hit.elapsed = await server.get(f"/record/{key}/{hit.token}")
            hit.node = transport.node
            await asyncio.sleep(0.02)

    try:
        assert (await server.get("/add/2/3"))[:2] == (200, b"5")
        assert transport.node == 0 and producer.connected
        streams = [asyncio.create_task(stream(n)) for n in range(3)]
        await _wait_until(lambda: sum(h.status == 202 for h in hits) >= 40, 20,
                          "requests confirmed by node A")
        # a waiting request across the switch: its task runs on A's worker, A goes away
        waiting = asyncio.create_task(server.get("/sleep/6"))
        await asyncio.sleep(0.3)
        phase["name"] = "stopping"
        await asyncio.to_thread(a.stop)
        phase["name"] = "b"
        await _wait_until(lambda: sum(h.status == 202 and h.token.startswith("b-")
                                      for h in hits) >= 40, 20,
                          "requests confirmed by node B")
        assert transport.node == 1 and producer.connected
        wait_status, wait_body, wait_elapsed = await asyncio.wait_for(waiting, 20)
        assert wait_status in (200, 503), (wait_status, wait_body)
        assert wait_elapsed < 10, wait_elapsed
        # the reply queue was declared on B, and is consumed there (by us)
        assert producer.reply_queue is not None
        assert b.queue(producer.reply_queue.name) == (0, 1)
        # a waiting request on B round-trips
        assert (await server.get("/add/40/2"))[:2] == (200, b"42")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*streams), 30)
        # A comes back: its worker runs what A held
        await asyncio.to_thread(a.start)
        confirmed = {h.token for h in hits if h.status == 202}
        await _wait_until(lambda: client.scard(key) >= len(confirmed), 60,
                          "every confirmed task to run", poll=0.3)
    finally:
        stop.set()
        await server.close()
        await producer.close()

    statuses = {h.status for h in hits}
    print(f"failover: {len(hits)} requests, {sum(h.status == 202 for h in hits)} confirmed, "
          f"{sum(h.status == 503 for h in hits)} 503, max {max(h.elapsed for h in hits):.2f}s; "
          f"the waiting request: {wait_status} in {wait_elapsed:.2f}s")
    assert statuses <= {202, 503}, sorted(statuses)
    assert max(h.elapsed for h in hits) < 5, "a request waited longer than its bounds"
    executed = client.smembers(key)
    assert confirmed <= executed, sorted(confirmed - executed)[:10]
    on_a = [h for h in hits if h.status == 202 and h.token.startswith("a-")]
    on_b = [h for h in hits if h.status == 202 and h.token.startswith("b-")]
    assert on_a and on_b
    assert len(on_a) + len(on_b) <= len(confirmed)


# -- quorum queues ---------------------------------------------------------------------------

def _list_queues(node: RabbitNode) -> dict[str, tuple[str, str]]:
    out = node.ctl("list_queues", "name", "type", "arguments", "durable", "--no-table-headers",
                   "--quiet").stdout
    queues: dict[str, tuple[str, str]] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) >= 4:
            queues[parts[0]] = (parts[1], f"{parts[2]} durable={parts[3]}")
    return queues


# Celery < 5.5 has no task_default_queue_type, and its worker cannot consume a quorum queue
# (it asks for a global QoS, which quorum queues refuse: the consumer restarts in a loop).
@pytest.mark.skipif(celery.VERSION < (5, 5), reason="quorum queues need Celery >= 5.5")
@pytest.mark.parametrize("mode", ["default-type", "arguments"])
@pytest.mark.parametrize("first", ["worker", "producer"])
async def test_quorum_queue_round_trips_whoever_declares_first(
        first: str, mode: str, nodes: tuple[RabbitNode, RabbitNode]) -> None:
    _a, b = nodes
    queue = f"{PREFIX}.quorum.{mode}.{first}.{uuid.uuid4().hex[:6]}"
    app = configure(fault_app.make_app(b.url, queue), mode, queue)
    declared = app.amqp.queues[queue]
    assert declared.queue_arguments == {"x-queue-type": "quorum"} and declared.durable
    worker = _worker(b, queue, f"q{mode[0]}{first[0]}", app="tests.quorum_app",
                     env={"TCELERY_QUORUM_MODE": mode})
    producer = Producer(app, publish_timeout=5)
    try:
        if first == "worker":
            await asyncio.to_thread(worker.start)
            result = await producer.send_task(ADD, (20, 22))
        else:
            result = await producer.send_task(ADD, (20, 22))  # declares the queue
            assert b.queue(queue) == (1, 0)
            await asyncio.to_thread(worker.start)
        assert await result.get(timeout=20) == 42
        # and again, with both declarations made: nothing refused either way
        again = await producer.send_task(ADD, (1, 2))
        assert await again.get(timeout=20) == 3
        kind, details = _list_queues(b)[queue]
        assert kind == "quorum", details
        assert "x-queue-type" in details and "durable=true" in details, details
        assert "PRECONDITION_FAILED" not in worker.log()
    finally:
        await producer.close()
        await asyncio.to_thread(worker.stop)
        b.delete_queue(queue)


def test_node_b_log_has_no_precondition_failures(nodes: tuple[RabbitNode, RabbitNode]) -> None:
    """Neither the producer nor the workers were refused a declaration on node B."""
    assert "PRECONDITION_FAILED" not in nodes[1].log_tail(200_000)
