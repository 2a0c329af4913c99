"""The benchmark's services: is RabbitMQ (and Redis) up, the run queue's depth, its deletion."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from bench.config import BROKER_URL


def _parameters() -> pika.URLParameters:
    url = BROKER_URL.split(";")[0].replace("pyamqp://", "amqp://")
    if url.endswith("//"):
        url = url[:-1] + "%2F"  # kombu's "//" means vhost "/"
    return pika.URLParameters(url)


def _with_channel(action: Callable[[Any], int]) -> int:
    params = _parameters()
    params.connection_attempts, params.socket_timeout = 1, 5
    conn = pika.BlockingConnection(params)
    try:
        return action(conn.channel())
    finally:
        conn.close()


def preflight() -> None:
    """Fail early, in one line, if RabbitMQ or Redis does not answer."""
    import redis

    from bench.config import REDIS_URL
    try:
        _with_channel(lambda channel: 0)
    except pika.exceptions.AMQPError as exc:
        raise RuntimeError(f"RabbitMQ does not answer at {BROKER_URL} ({exc!r}): start it "
                           "(`rabbitmq-server -detached`) or set BENCH_BROKER_URL") from None
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=5).ping()
    except redis.RedisError as exc:
        raise RuntimeError(f"Redis does not answer at {REDIS_URL} ({exc}): start it "
                           "(`redis-server --daemonize yes`) or set BENCH_REDIS_URL") from None


def queue_depth(queue: str) -> int:
    """Ready messages in ``queue`` (0 if it does not exist yet)."""
    def depth(channel: Any) -> int:
        try:
            return int(channel.queue_declare(queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0
    return _with_channel(depth)


def delete_queue(queue: str) -> None:
    """Remove the run's queue (and the exchange kombu declared with the same name)."""
    def delete(channel: Any) -> int:
        channel.queue_delete(queue)
        channel.exchange_delete(queue)
        return 0
    _with_channel(delete)


def wait_empty(queue: str, timeout: float) -> bool:
    """Wait until ``queue`` has no ready message; False if it still has some at ``timeout``."""
    deadline = time.monotonic() + timeout
    while queue_depth(queue) > 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def delete_result_keys(task_ids: list[str], chunk: int = 1000) -> int:
    """Delete the Redis result keys (``celery-task-meta-<id>``) of tasks the run created."""
    import redis

    from bench.config import REDIS_URL
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
    deleted = 0
    try:
        for start in range(0, len(task_ids), chunk):
            keys = [f"celery-task-meta-{i}" for i in task_ids[start:start + chunk] if i]
            if keys:
                deleted += int(client.delete(*keys))
    finally:
        client.close()
    return deleted
