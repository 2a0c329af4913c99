"""The example app end to end: its real worker, SQLite storage and HTTP routes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tcelery_req_handler import Producer
from tests.conftest import delete_queues_and_exchanges
from tests.test_http import Server, body_of, error_of
from tests.workers import ROOT, CeleryWorker

EXAMPLE = ROOT / "example"
QUEUE = f"{os.environ['TCELERY_TEST_PREFIX']}.example"


@pytest.fixture(scope="module")
def example_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    env = {"EXAMPLE_QUEUE": QUEUE, "EXAMPLE_DB": str(tmp_path_factory.mktemp("db") / "u.db"),
           "BROKER_URL": os.environ["TCELERY_TEST_BROKER"]}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the in-process Celery app reads them at import
    worker = CeleryWorker("backend.v1", [QUEUE], f"example-{QUEUE}", cwd=EXAMPLE,
                          env=env).start()
    try:
        yield env
    finally:
        worker.stop()
        delete_queues_and_exchanges([QUEUE])
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
async def example(example_env: dict[str, str]) -> AsyncIterator[Server]:
    sys.path.insert(0, str(EXAMPLE))
    import backend.v1
    import main

    assert backend.v1.app.conf.task_default_queue == QUEUE
    producer = Producer(backend.v1.app, result_timeout=20)
    app = main.make_app(producer=producer)
    srv = Server(app)
    yield srv
    srv.close()
    await producer.close()


async def test_crud_flow_end_to_end(example: Server) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    created = body_of(await example.fetch("/v1/user", "POST", "name=ann&email=a@x.io", form))
    assert created["name"] == "ann" and created["email"] == "a@x.io"
    user = f"/v1/user/{created['id']}"
    assert body_of(await example.fetch(user)) == created
    assert [u["name"] for u in body_of(await example.fetch("/v1/user"))] == ["ann"]
    updated = body_of(await example.fetch(user, "PUT", json.dumps({"email": "b@x.io"}),
                                          {"Content-Type": "application/json"}))
    assert updated["email"] == "b@x.io" and updated["name"] == "ann"
    assert body_of(await example.fetch(user, "DELETE")) == {"deleted": created["id"]}
    missing = error_of(await example.fetch(user), 404)  # error_statuses={"UserNotFound": 404}
    assert missing["error"]["type"] == "UserNotFound" and missing["state"] == "FAILURE"
    assert error_of(await example.fetch("/v1/user/abc"), 400)["error"]["type"] == "ValueError"
    assert error_of(await example.fetch("/v1/nothing"), 404)["error"]["type"] == "NotFound"
    assert body_of(await example.fetch("/v1/user")) == []


async def test_fire_and_forget_routes_store_for_real(example: Server) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    response = await example.fetch("/v1/async_user", "POST", "name=bob", form)
    assert response.code == 202 and len(body_of(response)["task_ids"]) == 1
    deadline = time.monotonic() + 10
    names: list[Any] = []
    while "bob" not in names:
        assert time.monotonic() < deadline, "the fire-and-forget create never ran"
        names = [u["name"] for u in body_of(await example.fetch("/v1/user"))]
    assert (await example.fetch("/v1/async_user", "PATCH")).code == 405


async def test_report_reports_progress(example: Server) -> None:
    response = await example.fetch("/v1/report", "POST", "steps=2&delay=0.1",
                                   {"Content-Type": "application/x-www-form-urlencoded"})
    assert response.code == 200
    assert body_of(response)["steps"] == 2


def test_main_without_broker_prints_one_line() -> None:
    env = {**os.environ, "BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"}
    done = subprocess.run([sys.executable, "main.py", "--port", "0"], cwd=EXAMPLE, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "rabbitmq-server -detached" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
