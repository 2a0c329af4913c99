"""The benchmark's corner of RabbitMQ: its own vhost, queue depth, purging between runs."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from urllib.parse import quote

import pika
import pika.exceptions

from bench.config import AMQP_PORT, HOST, VHOST


def ensure_vhost(vhost: str = VHOST) -> None:
    """Create the vhost (and give guest full rights on it) if it does not exist yet.

    Uses ``rabbitmqctl``, which a local RabbitMQ ships with; if it is missing, the vhost
    must already exist (``BENCH_VHOST=/`` uses the default one, at the risk of sharing
    ``payment_default1`` with a developer's example worker).
    """
    if vhost == "/" or _can_connect(vhost):
        return
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError(f"RabbitMQ vhost {vhost!r} does not exist and rabbitmqctl is not "
                           "available to create it; create it, or set BENCH_VHOST=/")
    for args in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
        subprocess.run([ctl, *args], check=True, capture_output=True, timeout=60)
    if not _can_connect(vhost):
        raise RuntimeError(f"created vhost {vhost!r} but still cannot connect to it")


def _parameters(vhost: str) -> pika.URLParameters:
    return pika.URLParameters(f"amqp://guest:guest@{HOST}:{AMQP_PORT}/{quote(vhost, safe='')}"
                              "?connection_attempts=1&socket_timeout=5&blocked_connection_timeout=5")


def _can_connect(vhost: str) -> bool:
    try:
        pika.BlockingConnection(_parameters(vhost)).close()
    except pika.exceptions.AMQPError:
        return False
    return True


def _with_channel(vhost: str, action: Callable[[object], int]) -> int:
    conn = pika.BlockingConnection(_parameters(vhost))
    try:
        return action(conn.channel())
    finally:
        conn.close()


def queue_depth(queue: str, vhost: str = VHOST) -> int:
    """Ready messages in ``queue`` (0 if it does not exist yet)."""
    def depth(channel: object) -> int:
        try:
            ok = channel.queue_declare(queue, passive=True)  # type: ignore[attr-defined]
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        return int(ok.method.message_count)
    return _with_channel(vhost, depth)


def purge(queue: str, vhost: str = VHOST) -> int:
    """Drop leftovers of an earlier (interrupted) run; returns how many were dropped."""
    def drop(channel: object) -> int:
        try:
            channel.queue_declare(queue, passive=True)  # type: ignore[attr-defined]
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        return int(channel.queue_purge(queue).method.message_count)  # type: ignore[attr-defined]
    return _with_channel(vhost, drop)


def wait_empty(queue: str, timeout: float, vhost: str = VHOST) -> bool:
    """Wait until ``queue`` has no ready message; False if it still has some at ``timeout``."""
    deadline = time.monotonic() + timeout
    while queue_depth(queue, vhost) > 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
