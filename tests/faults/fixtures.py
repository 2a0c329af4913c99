"""Pytest fixtures for the fault tests: one private node, one proxy, one worker per session.

A plugin: test modules load it with ``pytest_plugins = ["tests.faults.fixtures"]``. The
session fixtures are built on first use and torn down at the end of the session in reverse
order (workers, then proxy, then node), even when tests fail; a node orphaned by a killed run
is reaped by the next one (see ``rabbit_node``).

Function-scoped fixtures hand each test a healthy broker: the node running, no alarm, the
proxy forwarding, whatever the previous test did to them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from tcelery_req_handler import Producer
from tests.faults import fault_app
from tests.faults.common import PREFIX, QUEUE, worker_for
from tests.faults.proxy import TcpProxy
from tests.faults.rabbit_node import RabbitNode
from tests.workers import CeleryWorker


@pytest.fixture(scope="session")
def rabbit_node() -> Iterator[RabbitNode]:
    """The session's private RabbitMQ node (started on first use, destroyed at the end)."""
    node = RabbitNode()
    try:
        yield node.start()
    finally:
        node.destroy()


@pytest.fixture
def rabbit(rabbit_node: RabbitNode) -> Iterator[RabbitNode]:
    """The private node, running and alarm-free before and after the test."""
    _heal_node(rabbit_node)
    yield rabbit_node
    _heal_node(rabbit_node)


def _heal_node(node: RabbitNode) -> None:
    if not node.running:
        node.start()
    elif node.alarmed:
        node.clear_memory_alarm()


@pytest.fixture(scope="session")
def broker_proxy(rabbit_node: RabbitNode) -> Iterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", rabbit_node.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def proxy(broker_proxy: TcpProxy, rabbit: RabbitNode) -> Iterator[TcpProxy]:
    """The proxy in front of the private node, forwarding before and after the test."""
    broker_proxy.restore()
    yield broker_proxy
    broker_proxy.restore()


@pytest.fixture(scope="session")
def fault_worker(rabbit_node: RabbitNode) -> Iterator[CeleryWorker]:
    """A real worker on ``QUEUE``, connected straight to the private node (not the proxy).

    Prefork, not threads: with the thread pool the ``rpc://`` backend publishes results from
    several threads over one py-amqp connection, which corrupts its frames now and then
    ("Received frame_end 0x08 while expecting 0xce", celery/celery#4480, celery/py-amqp#330);
    the worker then drops its connection mid-test, and every later test waits in vain.
    """
    worker = worker_for(rabbit_node, [QUEUE], "faults", concurrency=8)
    try:
        yield worker.start()
    finally:
        worker.stop()


@pytest.fixture(scope="session")
def client_app(rabbit_node: RabbitNode) -> Celery:
    """The in-process Celery app (settings only; tasks are sent by name)."""
    return fault_app.make_app(rabbit_node.url, QUEUE)


@pytest.fixture
async def make_producer(client_app: Celery) -> AsyncIterator[Callable[..., Producer]]:
    """Build producers (``make_producer(url, **options)``); all are closed after the test."""
    made: list[Producer] = []

    def make(url: str, **options: Any) -> Producer:
        producer = Producer(client_app, broker_url=url, **options)
        made.append(producer)
        return producer

    yield make
    for producer in made:
        await producer.close()


@pytest.fixture
def redis_set() -> Iterator[tuple[redis.Redis, str]]:
    """A Redis client and a set key unique to the test, deleted afterwards."""
    client = redis.Redis.from_url(fault_app.REDIS_URL, decode_responses=True)
    key = f"{PREFIX}:faults:{uuid.uuid4().hex[:8]}"
    yield client, key
    client.delete(key)
    client.close()
