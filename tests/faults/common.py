"""Names and helpers the fault tests share (not fixtures: safe to import from test modules).

Queue names are unique to the run (``TCELERY_TEST_PREFIX``, set by ``tests/conftest.py``).
"""

from __future__ import annotations

import os
import uuid

from tests.faults import fault_app
from tests.faults.rabbit_node import RabbitNode
from tests.workers import CeleryWorker

PREFIX = os.environ.get("TCELERY_TEST_PREFIX", f"tcelery-test-{uuid.uuid4().hex[:8]}")
QUEUE = f"{PREFIX}.faults"


def worker_for(node: RabbitNode, queues: list[str], name: str, *, concurrency: int = 2,
               pool: str = "prefork") -> CeleryWorker:
    """A (not yet started) fault worker consuming ``queues`` straight from ``node``."""
    return CeleryWorker(
        "tests.faults.fault_app", queues, f"{name}-{PREFIX}", concurrency=concurrency,
        pool=pool,
        env={"TCELERY_FAULT_BROKER": node.url, "TCELERY_TEST_BROKER": node.url,
             "TCELERY_FAULT_QUEUE": QUEUE, "TCELERY_FAULT_REDIS": fault_app.REDIS_URL})
