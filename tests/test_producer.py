"""The producer against the real RabbitMQ and real ``celery worker`` processes."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import gc
import pickle
import threading
import time
import uuid
from pathlib import Path

import pika
import pytest
from celery import Celery

from tcelery_req_handler import (
    BrokerUnavailable,
    ConfigurationError,
    Producer,
    PublishError,
    ResultDecodeError,
    TaskFailed,
    TaskRevoked,
    TaskTimeout,
    TCeleryError,
    setup_nonblocking_producer,
)
from tcelery_req_handler.producer import get_producer
from tests import worker_app
from tests.conftest import BROKER_URL, blocking_connection


async def test_round_trip_args_kwargs_and_json(producer: Producer) -> None:
    result = await producer.apply_async(worker_app.echo, (1, "two", [3]),
                                        {"k": {"nested": True}, "n": None})
    value = await result.get(timeout=10)
    assert value == {"args": [1, "two", [3]], "kwargs": {"k": {"nested": True}, "n": None}}
    assert result.state == result.status == "SUCCESS"
    assert result.ready() and result.successful() and not result.failed()
    assert result.result == value and result.date_done


async def test_kombu_json_types_survive_the_round_trip(producer: Producer) -> None:
    # kombu's JSON tags datetimes, UUIDs and decimals; the reply decoder revives them.
    when = datetime.datetime(2026, 11, 21, 12, 30, tzinfo=datetime.timezone.utc)
    ident, amount = uuid.uuid4(), decimal.Decimal("12.50")
    result = await producer.apply_async(worker_app.echo, (when, ident, amount))
    value = await result.get(timeout=10)
    assert value["args"] == [when, ident, amount]
    assert type(value["args"][0]) is datetime.datetime
    assert producer.source._fast_json  # decoded by the fast path, not kombu's registry


async def test_send_task_by_name(producer: Producer) -> None:
    result = await producer.send_task("tests.worker_app.add", (20, 22))
    assert await result.get(timeout=10) == 42


async def test_failure_arrives_as_task_failed(producer: Producer) -> None:
    result = await producer.apply_async(worker_app.fail, ("the remote message",))
    with pytest.raises(TaskFailed) as info:
        await result.get(timeout=10)
    error = info.value
    assert error.task_id == result.task_id
    assert (error.exc_type, error.exc_message) == ("ValueError", "the remote message")
    assert error.exc_module == "builtins"
    assert error.traceback and "ValueError: the remote message" in error.traceback
    assert result.failed() and result.state == "FAILURE"
    assert (await result.get(propagate=False))["exc_type"] == "ValueError"


async def test_timeout_arrives_as_task_timeout(producer: Producer) -> None:
    result = await producer.apply_async(worker_app.sleep, (3,))
    started = time.monotonic()
    with pytest.raises(TaskTimeout) as info:
        await result.get(timeout=0.5)
    assert time.monotonic() - started < 2
    assert isinstance(info.value, TimeoutError)
    assert info.value.task_id == result.task_id and result.task_id in str(info.value)
    # The result stays usable: a later get still receives the value.
    assert await result.get(timeout=10) == 3


async def test_thousand_concurrent_sends_awaited_together(producer: Producer) -> None:
    results = await asyncio.gather(*(producer.apply_async(worker_app.add, (i, i))
                                     for i in range(1000)))
    assert len({r.task_id for r in results}) == 1000
    values = await asyncio.gather(*(r.get(timeout=60) for r in results))
    assert values == [2 * i for i in range(1000)]
    del results
    gc.collect()
    assert producer.pending == 0


async def test_abandoned_and_timed_out_results_leave_nothing_behind(producer: Producer) -> None:
    for _ in range(50):
        await producer.apply_async(worker_app.sleep, (0.2,))  # dropped at once: abandoned
    timed_out = await producer.apply_async(worker_app.sleep, (0.2,))
    with pytest.raises(TaskTimeout):
        await timed_out.get(timeout=0.01)
    del timed_out
    gc.collect()
    assert producer.pending == 0
    # Their late replies are dropped quietly and the producer keeps working.
    await asyncio.sleep(1.0)
    assert await (await producer.apply_async(worker_app.add, (1, 1))).get(timeout=10) == 2


async def test_routing_to_a_queue_only_another_worker_consumes(producer: Producer) -> None:
    other = f"other-{worker_app.PREFIX}"
    via_option = await producer.apply_async(worker_app.where_am_i,
                                            queue=worker_app.OTHER_QUEUE)
    via_routes = await producer.apply_async(worker_app.where_am_i_routed)
    default = await producer.apply_async(worker_app.where_am_i)
    for result in (via_option, via_routes):
        info = await result.get(timeout=10)
        assert info["hostname"].startswith(other)
        assert info["routing_key"] == worker_app.OTHER_QUEUE
    assert (await default.get(timeout=10))["hostname"].startswith(f"main-{worker_app.PREFIX}")


async def test_countdown_is_honoured(producer: Producer) -> None:
    started = time.monotonic()
    result = await producer.apply_async(worker_app.add, (1, 2), countdown=1.5)
    assert await result.get(timeout=10) == 3
    assert time.monotonic() - started >= 1.4


async def test_expired_task_is_revoked(producer: Producer) -> None:
    result = await producer.apply_async(worker_app.add, (1, 2), countdown=2, expires=1)
    with pytest.raises(TaskRevoked) as info:
        await result.get(timeout=10)
    assert info.value.task_id == result.task_id
    assert result.state == "REVOKED"


async def test_started_and_progress_are_observed(producer: Producer) -> None:
    result = await producer.apply_async(worker_app.progress, (3,), {"delay": 0.1})
    seen = [(state, meta) async for state, meta in result.states(timeout=10)]
    states = [state for state, _ in seen]
    assert states[0] == "STARTED"
    assert [meta for state, meta in seen if state == "PROGRESS"] == [
        {"current": i, "total": 3} for i in (1, 2, 3)]
    assert seen[-1] == ("SUCCESS", 3)


async def test_stock_celery_client_and_ours_share_the_worker(producer: Producer) -> None:
    stock = worker_app.add.apply_async  # Celery's own blocking client, in a thread

    def stock_round_trips() -> list[int]:
        sent = [stock((i, 1000)) for i in range(20)]
        return [r.get(timeout=20) for r in sent]

    ours = asyncio.gather(*(producer.apply_async(worker_app.add, (i, 2000)) for i in range(20)))
    theirs = asyncio.get_running_loop().run_in_executor(None, stock_round_trips)
    results, stock_values = await asyncio.gather(ours, theirs)
    assert stock_values == [i + 1000 for i in range(20)]
    assert [await r.get(timeout=20) for r in results] == [i + 2000 for i in range(20)]


async def test_pickle_reply_is_refused(producer: Producer, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(marker),))  # would create the file if ever unpickled

    result = await producer.apply_async(worker_app.sleep, (1,))
    connection = blocking_connection()
    connection.channel().basic_publish(
        "", producer.reply_queue.name, pickle.dumps({"status": "SUCCESS", "result": Boom()}),
        pika.BasicProperties(correlation_id=result.task_id,
                             content_type="application/x-python-serialize",
                             content_encoding="binary"))
    connection.close()
    with pytest.raises(ResultDecodeError) as info:
        await result.get(timeout=5)
    assert info.value.content_type == "application/x-python-serialize"
    assert not marker.exists()


@pytest.mark.parametrize("body", [
    b'{"status": "SUCCESS", "result": ',  # malformed
    b'{"status": "SUCCESS", "result": "\xff"}',  # not UTF-8
    b'{"status": "SUCCESS", "result": {"__type__": "nope", "__value__": 1}}',  # kombu tag
], ids=["malformed", "not-utf8", "unknown-kombu-type"])
async def test_undecodable_json_reply_fails_its_waiter(producer: Producer, body: bytes) -> None:
    result = await producer.apply_async(worker_app.sleep, (1,))
    connection = blocking_connection()
    connection.channel().basic_publish(
        "", producer.reply_queue.name, body,
        pika.BasicProperties(correlation_id=result.task_id, content_type="application/json",
                             content_encoding="utf-8"))
    connection.close()
    with pytest.raises(ResultDecodeError) as info:
        await result.get(timeout=5)
    assert info.value.task_id == result.task_id
    assert producer.pending == 0  # its waiter is gone from the registry
    # The consumer survived the bad reply: the next task's result still arrives.
    assert await (await producer.apply_async(worker_app.add, (2, 3))).get(timeout=10) == 5


async def test_unknown_option_raises_type_error_before_any_io(producer: Producer) -> None:
    with pytest.raises(TypeError, match="bogus"):
        await producer.apply_async(worker_app.add, (1, 2), bogus=True)


async def test_unroutable_message_is_a_publish_error(producer: Producer) -> None:
    with pytest.raises(PublishError, match="unroutable"):
        await producer.apply_async(worker_app.add, (1, 2), exchange="amq.direct",
                                   routing_key="nobody-binds-this", exchange_type="direct")


async def test_fire_and_forget_returns_confirmed_untracked_result(producer: Producer) -> None:
    result = await producer.apply_async(worker_app.add, (1, 2), reply=False)
    assert result.task_id and producer.pending == 0
    with pytest.raises(TCeleryError, match="reply=False"):
        await result.get()


async def test_unreachable_broker_fails_within_bounded_time() -> None:
    app = Celery("down", broker="amqp://guest:guest@127.0.0.1:1//", backend="rpc://",
                 set_as_current=False)
    producer = Producer(app, connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        await producer.apply_async("tests.worker_app.add", (1, 2))
    with pytest.raises(BrokerUnavailable):  # while it retries: fail fast
        await producer.send_task("tests.worker_app.add", (1, 2))
    assert time.monotonic() - started < 3
    await producer.close()


async def test_close_leaves_nothing_behind(workers: object) -> None:
    before = asyncio.all_tasks()
    producer = Producer(worker_app.app)
    pending = await producer.apply_async(worker_app.sleep, (2,))
    await producer.close()
    assert asyncio.all_tasks() - before == set()
    with pytest.raises(BrokerUnavailable, match="closed"):
        await pending.get(timeout=5)
    with pytest.raises(BrokerUnavailable, match="closed"):
        await producer.apply_async(worker_app.add, (1, 2))


def test_non_amqp_broker_urls_are_refused_with_the_scheme_named() -> None:
    app = Celery("redis", broker="redis://localhost:6379/0", set_as_current=False)
    with pytest.raises(ConfigurationError, match="'redis'"):
        Producer(app)


async def test_awaiting_needs_the_rpc_backend(workers: object) -> None:
    app = Celery("nobackend", broker=BROKER_URL, set_as_current=False)
    app.conf.task_default_queue = worker_app.DEFAULT_QUEUE
    async with Producer(app) as producer:
        with pytest.raises(ConfigurationError, match="rpc://"):
            await producer.send_task("tests.worker_app.add", (1, 2))
        assert (await producer.send_task("tests.worker_app.add", (1, 2), reply=False)).task_id


async def test_setup_nonblocking_producer_installs_the_default(workers: object) -> None:
    producer = setup_nonblocking_producer(worker_app.app, result_timeout=5)
    assert get_producer() is producer
    try:
        assert await (await producer.apply_async(worker_app.add, (2, 2))).get() == 4
    finally:
        await producer.close()
    with pytest.raises(ConfigurationError):
        get_producer()


async def test_ten_thousand_concurrent_waits_share_one_connection(producer: Producer) -> None:
    assert producer.max_pending >= 10_000  # all of them may be awaited at once
    threads_before = threading.active_count()
    connection = producer.transport.connection
    results = await asyncio.gather(*(producer.apply_async(worker_app.add, (i, 1))
                                     for i in range(10_000)))
    waits = [asyncio.ensure_future(r.get(timeout=90)) for r in results]
    await asyncio.sleep(0)  # every get() is now parked on the loop
    assert threading.active_count() == threads_before  # no thread per wait
    values = await asyncio.gather(*waits)
    assert values == [i + 1 for i in range(10_000)]
    assert threading.active_count() == threads_before
    assert producer.transport.connection is connection  # one connection carried all of it


async def test_float_headers_reach_the_worker_as_floats(producer: Producer) -> None:
    # pika encodes no float in a header table; Celery's own headers hold them (timelimit).
    result = await producer.apply_async(worker_app.headers_seen, time_limit=7.5,
                                        headers={"ratio": 0.25})
    assert await result.get(timeout=10) == {"timelimit": [7.5, None], "ratio": 0.25}
