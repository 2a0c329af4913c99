"""Fault tests of the Redis result source (``backends/redis.py``), against real processes.

A private ``redis-server`` (``tests/faults/redis_node.py``) holds the results. The worker
(``tests/faults/redis_app.py``) takes its tasks from the system RabbitMQ and stores every state
in the private Redis *directly*; the producer under test reaches that Redis through a
:class:`~tests.faults.proxy.TcpProxy`, so a test can cut or freeze the producer's link while
the worker keeps storing, or stop the server itself. Covered: the subscribe race (a result
stored before anyone subscribed; states stored while the link was down), an outage longer
than ``connect_timeout`` (503s, SSE error, recovery by itself), the release of every
subscription, and an undecodable payload.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pika
import pytest
import redis
from celery import Celery
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application

import tcelery_req_handler.backends.redis as redis_source
from tcelery_req_handler import (
    Producer,
    TCeleryNotFoundHandler,
    routes,
    tcelery_routes,
    tcelery_status_routes,
)
from tcelery_req_handler.backends.redis import RedisSource
from tcelery_req_handler.errors import (
    BrokerUnavailable,
    Overloaded,
    ResultDecodeError,
    TaskTimeout,
)
from tcelery_req_handler.results import TaskResult
from tcelery_req_handler.transports.amqp import connection_parameters
from tests.conftest import delete_queues_and_exchanges
from tests.faults import redis_app
from tests.faults.common import PREFIX
from tests.faults.proxy import TcpProxy
from tests.faults.redis_app import ADD, GATE, GATED, PICKLED
from tests.faults.redis_node import RedisNode
from tests.workers import CeleryWorker

BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"  # the system RabbitMQ (see conftest.py)
QUEUE = f"{PREFIX}.redis-faults"
PARKED = f"{QUEUE}.parked"  # no worker consumes it: a wait on it only ends by a fault

MakeProducer = Callable[..., Producer]


# -- session pieces ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redis_node() -> Iterator[RedisNode]:
    """The module's private redis-server (killed and deleted at the end, whatever happened)."""
    node = RedisNode()
    try:
        yield node.start()
    finally:
        node.destroy()


@pytest.fixture(scope="module")
def redis_proxy(redis_node: RedisNode) -> Iterator[TcpProxy]:
    """The cut-able link between the producer and the private Redis."""
    proxy = TcpProxy("127.0.0.1", redis_node.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def redis_worker(redis_node: RedisNode) -> Iterator[CeleryWorker]:
    """A real worker on ``QUEUE`` whose result backend is the private Redis, reached
    directly. The run's queues and exchanges are deleted at the end."""
    worker = CeleryWorker(
        "tests.faults.redis_app", [QUEUE], f"redis-faults-{PREFIX}", concurrency=4,
        env={"TCELERY_REDIS_FAULT_BROKER": BROKER_URL,
             "TCELERY_REDIS_FAULT_BACKEND": redis_node.url,
             "TCELERY_REDIS_FAULT_QUEUE": QUEUE})
    try:
        yield worker.start()
    finally:
        worker.stop()
        delete_queues_and_exchanges([QUEUE, PARKED])


@pytest.fixture(scope="module")
def client_app(redis_proxy: TcpProxy) -> Celery:
    """The in-process app: same settings as the worker's, results read through the proxy."""
    return redis_app.make_app(BROKER_URL, f"redis://127.0.0.1:{redis_proxy.port}/0", QUEUE)


@pytest.fixture
def node(redis_node: RedisNode, redis_proxy: TcpProxy,
         redis_worker: CeleryWorker) -> Iterator[RedisNode]:
    """The private Redis running and the proxy forwarding, before and after the test."""
    redis_node.start()
    redis_proxy.restore()
    yield redis_node
    redis_proxy.restore()
    redis_node.start()


@pytest.fixture
def direct(node: RedisNode) -> Iterator[redis.Redis]:
    """A client straight to the private Redis (not through the proxy)."""
    client = node.client()
    yield client
    client.close()


@pytest.fixture
async def make_producer(client_app: Celery) -> AsyncIterator[MakeProducer]:
    """``make_producer(**options)``: producers on the client app, all closed after the test."""
    made: list[Producer] = []

    def make(**options: Any) -> Producer:
        options.setdefault("result_timeout", 20)
        made.append(Producer(client_app, **options))
        return made[-1]

    yield make
    for producer in made:
        await producer.close()


class Server:
    """A real Tornado server in the test's loop: waiting routes and the status routes."""

    def __init__(self, producer: Producer, timeout: float) -> None:
        common: dict[str, Any] = {"producer": producer, "timeout": timeout}
        rules = routes(
            tcelery_routes(r"/add/(\d+)/(\d+)", get_tasks=[ADD], **common),
            tcelery_routes(r"/parked/(\d+)/(\d+)", get_tasks=[ADD], queue=PARKED, **common),
            tcelery_routes(r"/pickled/(\w+)", get_tasks=[PICKLED], **common),
            tcelery_status_routes("/tasks", producer=producer, stream_timeout=60),
        )
        sock, self.port = bind_unused_port()
        self.server = HTTPServer(Application(rules,
                                             default_handler_class=TCeleryNotFoundHandler))
        self.server.add_sockets([sock])
        self.client = AsyncHTTPClient(force_instance=True, max_clients=50)

    async def get(self, path: str, timeout: float = 15.0, **options: Any) -> HTTPResponse:
        return await self.client.fetch(f"http://127.0.0.1:{self.port}{path}", raise_error=False,
                                       request_timeout=timeout, **options)

    async def close(self) -> None:
        self.client.close()
        self.server.stop()
        await self.server.close_all_connections()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(producer: Producer, timeout: float = 15.0) -> Server:
        servers.append(Server(producer, timeout))
        return servers[-1]

    yield start
    for server in servers:
        await server.close()


# -- helpers ----------------------------------------------------------------------------------
def _messages_in(queue: str) -> int:
    conn = pika.BlockingConnection(connection_parameters(BROKER_URL, heartbeat=60,
                                                         connect_timeout=5))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until true; seconds it took. AssertionError naming ``what`` if not."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not check():
        if loop.time() - start > timeout:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(0.01)
    return loop.time() - start


def _stored(direct: redis.Redis, key: bytes) -> dict[str, Any] | None:
    raw = direct.get(key)
    return None if raw is None else dict(json.loads(raw))


def _numsub(direct: redis.Redis, channels: list[bytes]) -> list[int]:
    """Subscribers of each channel, as the server counts them."""
    counts: list[tuple[bytes | str, int]] = []
    for start in range(0, len(channels), 100):
        counts += direct.pubsub_numsub(*channels[start:start + 100])
    return [int(count) for _, count in counts]


def _json(response: HTTPResponse) -> Any:
    assert response.headers["Content-Type"].startswith("application/json"), response
    return json.loads(response.body)


def _events(body: bytes) -> list[tuple[str, Any]]:
    """``(event, data)`` of every event in an SSE body (comments and ``retry:`` skipped)."""
    events = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def _source(producer: Producer) -> RedisSource:
    source = producer.require_results("the Redis fault tests")
    assert isinstance(source, RedisSource), source
    return source


async def _progress(result: TaskResult, timeout: float = 15.0) -> None:
    await eventually(lambda: result.state == "PROGRESS", timeout, "the task reported PROGRESS")


# -- 1. a result stored before anyone subscribed ----------------------------------------------
async def test_result_stored_before_anyone_subscribed_is_read_at_once(
        make_producer: MakeProducer, serve: Callable[..., Server],
        direct: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_source, "_TICK", 0.3)  # the sweep of let-go lookups
    producer = make_producer()
    await producer.connect()
    source = _source(producer)
    sent = await producer.send_task(ADD, [20, 22], reply=False)
    key = source.key(sent.task_id)
    await eventually(lambda: _stored(direct, key) is not None, 15, "the worker stored it")
    stored = _stored(direct, key)
    assert stored is not None and stored["status"] == "SUCCESS" and stored["result"] == 42
    assert source.describe()["watched"] == 0 and _numsub(direct, [key]) == [0]

    # Nothing will ever be published for it again: only the GET after SUBSCRIBE can see it.
    result = await producer.result(sent.task_id)
    assert (result.state, result.result, result.ready()) == ("SUCCESS", 42, True)
    assert result.date_done == stored["date_done"]
    assert await result.get(timeout=0.001) == 42
    assert source.describe()["watched"] == 0  # ready: let go of at once
    await eventually(lambda: _numsub(direct, [key]) == [0], 5, "channel unsubscribed")

    server = serve(producer)
    response = await server.get(f"/tasks/{sent.task_id}")
    assert response.code == 200, response.body
    assert _json(response) == {
        "task_id": sent.task_id, "state": "SUCCESS", "ready": True, "successful": True,
        "result": 42, "error": None, "progress": None, "date_done": stored["date_done"]}
    unknown = str(uuid.uuid4())
    response = await server.get(f"/tasks/{unknown}")
    assert response.code == 200 and _json(response)["state"] == "PENDING"
    assert producer.pending == 0  # nobody holds the PENDING lookup once it is answered
    await eventually(lambda: source.describe()["watched"] == 0, 3,
                     "the sweep unsubscribes the lookup nobody holds")
    await eventually(lambda: _numsub(direct, [source.key(unknown)]) == [0], 3,
                     "the server holds no subscription of it")


async def _recovered(producer: Producer, source: RedisSource, result: TaskResult,
                     value: str, reconnects_before: int, direct: redis.Redis) -> None:
    """After the link is back: the wait gets the value stored meanwhile (from the MGET after
    re-subscribing), the source counted one reconnect and is up (a new wait is accepted at
    once), and no channel stays subscribed."""
    key = source.key(result.task_id)
    assert await result.get(timeout=10) == value
    assert source.healthy and source.reconnects == reconnects_before + 1
    again = await producer.send_task(ADD, [2, 2])
    assert await again.get(timeout=15) == 4
    assert source.describe()["watched"] == 0
    await eventually(lambda: _numsub(direct, [key, source.key(again.task_id)]) == [0, 0], 5,
                     "the channel read by the MGET is unsubscribed too")


# -- 2. states stored while the producer's link was down -------------------------------------
async def test_success_stored_during_a_cut_is_read_after_the_reconnect(
        make_producer: MakeProducer, redis_proxy: TcpProxy, direct: redis.Redis) -> None:
    producer = make_producer(connect_timeout=5.0, reconnect_max_delay=0.5)
    await producer.connect()
    source = _source(producer)
    token = uuid.uuid4().hex
    result = await producer.send_task(GATED, [token, "after-the-cut"])
    key = source.key(result.task_id)
    await _progress(result)
    assert result.result == {"step": 1, "token": token}
    before = source.reconnects

    redis_proxy.cut("refuse")
    cut_at = time.monotonic()
    await eventually(lambda: not source.healthy, 3, "the source saw the reset")
    direct.set(GATE.format(token=token), 1)
    await eventually(lambda: (_stored(direct, key) or {}).get("status") == "SUCCESS", 10,
                     "the worker stored SUCCESS while the producer was cut off")
    assert result.state == "PROGRESS"  # its PUBLISH reached no subscriber of ours
    assert time.monotonic() - cut_at < 4.0, "too slow to stay within connect_timeout"
    redis_proxy.restore()

    await _recovered(producer, source, result, "after-the-cut", before, direct)


async def test_success_stored_during_a_silent_partition_is_read_after_it(
        make_producer: MakeProducer, redis_proxy: TcpProxy, direct: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    tick = 0.4
    monkeypatch.setattr(redis_source, "_TICK", tick)
    producer = make_producer(connect_timeout=5.0, reconnect_max_delay=0.5)
    await producer.connect()
    source = _source(producer)
    token = uuid.uuid4().hex
    result = await producer.send_task(GATED, [token, "after-the-freeze"])
    key = source.key(result.task_id)
    await _progress(result)
    before = source.reconnects

    redis_proxy.freeze()  # no FIN, no RST: only the source's own ticks can tell
    direct.set(GATE.format(token=token), 1)
    await eventually(lambda: (_stored(direct, key) or {}).get("status") == "SUCCESS", 10,
                     "the worker stored SUCCESS during the partition")
    assert result.state == "PROGRESS"
    await eventually(lambda: not source.healthy, 2 * tick + 1.5,
                     "two silent ticks mark the connection dead")
    redis_proxy.restore()

    await _recovered(producer, source, result, "after-the-freeze", before, direct)


# -- 3. Redis itself stopped in the middle of waits -------------------------------------------
async def test_redis_stopped_mid_wait_fails_waits_in_time_then_recovers_by_itself(
        node: RedisNode, make_producer: MakeProducer, serve: Callable[..., Server]) -> None:
    connect_timeout = 2.0
    producer = make_producer(connect_timeout=connect_timeout, reconnect_max_delay=0.5)
    await producer.connect()
    source = _source(producer)
    server = serve(producer, timeout=30.0)

    # a waiting request and an event stream on tasks that no worker will ever run
    parked = await producer.send_task(ADD, [0, 0], queue=PARKED, reply=False)
    waiting = asyncio.ensure_future(server.get("/parked/1/2", timeout=20))
    chunks: list[bytes] = []
    stream = asyncio.ensure_future(server.get(f"/tasks/{parked.task_id}/events", timeout=20,
                                              streaming_callback=chunks.append))
    await eventually(lambda: source.describe()["watched"] == 2
                     and b"event: PENDING" in b"".join(chunks), 10, "both are watched")
    in_queue = _messages_in(PARKED)

    node.stop()
    stopped_at = asyncio.get_running_loop().time()
    await eventually(lambda: not source.healthy, 1.0, "the source saw the server go")

    # while it is down, new waits are refused at once, before anything is published
    for path in ("/add/1/2", "/parked/3/4", f"/tasks/{uuid.uuid4()}"):
        response = await server.get(path)
        assert response.code == 503, (path, response.body)
        assert (response.request_time or 0) < 0.5, (path, response.request_time)
        assert _json(response)["error"]["type"] == "BrokerUnavailable"
        assert response.headers["Retry-After"] == "1"
    with pytest.raises(BrokerUnavailable):
        await producer.send_task(ADD, [1, 2])
    assert _messages_in(PARKED) == in_queue

    # the waits in flight hold on for connect_timeout, then fail
    response = await asyncio.wait_for(waiting, connect_timeout + 3)
    failed_after = asyncio.get_running_loop().time() - stopped_at
    assert response.code == 503, response.body
    assert _json(response)["error"]["type"] == "BrokerUnavailable"
    assert connect_timeout - 0.3 <= failed_after <= connect_timeout + 1.5, failed_after
    response = await asyncio.wait_for(stream, 3)
    assert response.code == 200
    events = _events(b"".join(chunks))
    assert [name for name, _ in events] == ["PENDING", "error"], events
    assert events[1][1]["task_id"] == parked.task_id
    assert events[1][1]["error"]["type"] == "BrokerUnavailable"
    assert source.describe()["watched"] == 0
    assert producer.pending == 0  # nothing holds a refused or failed wait (no gc needed)

    # the same server back on the same port: the producer recovers without any help
    node.start()
    restarted_at = asyncio.get_running_loop().time()
    while True:
        response = await server.get("/add/2/3")
        if response.code == 200:
            break
        assert response.code == 503, response.body
        assert asyncio.get_running_loop().time() - restarted_at < 5, "no recovery in 5 s"
        await asyncio.sleep(0.05)
    assert _json(response) == 5
    assert source.reconnects >= 1 and source.healthy
    response = await server.get(f"/tasks/{parked.task_id}")  # an empty server: PENDING
    assert response.code == 200 and _json(response)["state"] == "PENDING"


# -- 4. every subscription is released -------------------------------------------------------
async def _abandoned_waits(producer: Producer, count: int) -> list[bytes]:
    """Waits on parked tasks that time out and are dropped: their channels."""
    source = _source(producer)
    results = [await producer.send_task(ADD, [i, 0], queue=PARKED) for i in range(count)]
    for result in results:
        with pytest.raises(TaskTimeout):
            await result.get(timeout=0.01)
    return [source.key(result.task_id) for result in results]


async def test_every_channel_is_unsubscribed_once_its_wait_is_over(
        make_producer: MakeProducer, direct: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_source, "_TICK", 0.3)  # the sweep of abandoned waits
    producer = make_producer(max_pending=200)
    await producer.connect()
    source = _source(producer)

    outcomes = await asyncio.gather(*(producer.send_task(ADD, [i, 1]) for i in range(300)),
                                    return_exceptions=True)
    sent = [outcome for outcome in outcomes if isinstance(outcome, TaskResult)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, Overloaded)]
    assert (len(sent), len(refused)) == (200, 100), [
        o for o in outcomes if not isinstance(o, (TaskResult, Overloaded))]
    assert source.describe()["watched"] == sum(not r.ready() for r in sent)  # some are done
    values = await asyncio.wait_for(asyncio.gather(*(r.get() for r in sent)), 60)
    assert values == [i + 1 for i in range(200)]
    assert source.describe()["watched"] == 0 and producer.pending == 0
    channels = [source.key(result.task_id) for result in sent]

    abandoned = await _abandoned_waits(producer, 20)
    gc.collect()
    await eventually(lambda: source.describe()["watched"] == 0, 5,
                     "the sweep let go of the abandoned waits")
    channels += abandoned
    await eventually(lambda: not any(_numsub(direct, channels)), 5,
                     "the server holds no subscription of ours")
    assert direct.pubsub_channels("celery-task-meta-*") == []
    assert producer.pending == 0


# -- 5. a payload the app does not accept ----------------------------------------------------
async def test_undecodable_payload_fails_its_wait_and_nothing_else(
        make_producer: MakeProducer, serve: Callable[..., Server],
        direct: redis.Redis) -> None:
    producer = make_producer()
    await producer.connect()
    source = _source(producer)

    result = await producer.send_task(PICKLED, ["secret"])
    with pytest.raises(ResultDecodeError) as info:
        await result.get(timeout=15)
    assert info.value.task_id == result.task_id
    raw = direct.get(source.key(result.task_id))
    assert raw is not None and raw[:1] == b"\x80"  # a pickle, really stored and published
    assert source.describe()["watched"] == 0 and source.healthy
    assert await (await producer.send_task(ADD, [1, 2])).get(timeout=15) == 3

    server = serve(producer)
    response = await server.get("/pickled/abc")
    assert response.code == 502, response.body
    body = _json(response)
    assert body["error"]["type"] == "ResultDecodeError" and body["task_id"]
    for task_id in (body["task_id"], result.task_id):  # a lookup GETs the same payload
        response = await server.get(f"/tasks/{task_id}")
        assert response.code == 502, response.body
        assert _json(response)["error"]["type"] == "ResultDecodeError"
    response = await server.get("/add/2/2")
    assert response.code == 200 and _json(response) == 4
    assert source.describe()["watched"] == 0 and source.healthy
