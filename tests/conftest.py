"""Session fixtures: the real RabbitMQ and Redis (checked loudly) and real Celery workers.

Every run uses queue names of its own (``tcelery-test-<id>.*``), so concurrent runs and
leftovers from earlier runs cannot interfere; the queues are deleted at the end.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlparse

import pika
import pytest

RUN_ID = uuid.uuid4().hex[:8]
os.environ.setdefault("TCELERY_TEST_PREFIX", f"tcelery-test-{RUN_ID}")
BROKER_URL = os.environ.setdefault("TCELERY_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.setdefault("TCELERY_TEST_REDIS", "redis://127.0.0.1:6379/0")

from tcelery_req_handler import Producer  # noqa: E402
from tcelery_req_handler.transports.amqp import connection_parameters  # noqa: E402
from tests import worker_app  # noqa: E402
from tests.workers import CeleryWorker  # noqa: E402


def _require_broker() -> None:
    url = urlparse(BROKER_URL)
    host, port = url.hostname or "127.0.0.1", url.port or 5672
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        pytest.exit(
            f"RabbitMQ is not reachable at {host}:{port} ({exc}). These tests need a real "
            "broker: start one with `rabbitmq-server -detached` (then `rabbitmqctl "
            "await_startup`), or point TCELERY_TEST_BROKER at one.", returncode=3)


def _require_redis() -> None:
    url = urlparse(REDIS_URL)
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    try:
        with socket.create_connection((host, port), timeout=3) as sock:
            sock.sendall(b"PING\r\n")
            answer = sock.recv(64)
        if not answer.startswith(b"+PONG"):
            raise OSError(f"answered {answer!r} to PING")
    except OSError as exc:
        pytest.exit(
            f"Redis is not reachable at {host}:{port} ({exc}). These tests need a real Redis: "
            "start one with `redis-server --daemonize yes --save ''`, or point "
            "TCELERY_TEST_REDIS at one.", returncode=3)


def pytest_sessionstart(session: pytest.Session) -> None:
    _require_broker()
    _require_redis()


def blocking_connection() -> pika.BlockingConnection:
    """A plain blocking pika connection to the test broker, for setting up test conditions."""
    return pika.BlockingConnection(
        connection_parameters(BROKER_URL, heartbeat=60, connect_timeout=5))


def delete_queues_and_exchanges(names: list[str]) -> None:
    """Delete the queues a test declared, and the exchanges of the same names (Celery
    declares a direct exchange named after each queue)."""
    try:
        conn = blocking_connection()
    except Exception:
        return
    channel = conn.channel()
    for name in names:
        channel.queue_delete(name)
        channel.exchange_delete(name)
    conn.close()


def _delete_run_queues() -> None:
    delete_queues_and_exchanges([worker_app.DEFAULT_QUEUE, worker_app.OTHER_QUEUE])


@pytest.fixture(scope="session")
def workers() -> Iterator[dict[str, CeleryWorker]]:
    """The run's two real workers: ``main`` on the default queue, ``other`` on the other one."""
    prefix = worker_app.PREFIX
    main = CeleryWorker("tests.worker_app", [worker_app.DEFAULT_QUEUE], f"main-{prefix}",
                        concurrency=4)
    other = CeleryWorker("tests.worker_app", [worker_app.OTHER_QUEUE], f"other-{prefix}",
                         concurrency=1)
    try:
        main.start()
        other.start()
        yield {"main": main, "other": other}
    finally:
        main.stop()
        other.stop()
        _delete_run_queues()


@pytest.fixture
async def producer(workers: dict[str, CeleryWorker]) -> AsyncIterator[Producer]:
    async with Producer(worker_app.app, result_timeout=20) as p:  # connected, closed after
        yield p
