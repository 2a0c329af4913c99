"""Fault tests of the producer (issues 2 and 5): the network, the broker and the worker fail
for real, and the producer must neither hang nor crash, nor lose what it confirmed.

The broker is a private RabbitMQ node (``tests.faults.rabbit_node``); the producer reaches it
through a TCP proxy the tests cut (``tests.faults.proxy``); the tasks run on the tests' own
``celery worker`` processes, which talk to the node directly, so only the producer's side of
the network fails.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis
from celery import Celery

from tcelery_req_handler import BrokerUnavailable, Overloaded, Producer, TaskResult, TaskTimeout
from tests.faults.common import QUEUE, worker_for
from tests.faults.fault_app import ADD, RECORD, SLEEP
from tests.faults.proxy import TcpProxy
from tests.faults.rabbit_node import RabbitNode
from tests.workers import CeleryWorker

pytest_plugins = ["tests.faults.fixtures"]

MakeProducer = Callable[..., Producer]


@dataclass
class Attempt:
    """One request of a load loop: when it started, how it ended, how long each part took."""

    started: float
    outcome: str = "pending"  # "ok", "unavailable", or the repr of anything else
    publish_s: float = 0.0  # until apply_async returned or raised
    total_s: float = 0.0  # until the result arrived (or the error)


async def _request_loop(producer: Producer, attempts: list[Attempt], stop_at: float,
                        *, interval: float = 0.05, limit: int = 1000) -> None:
    """Send ``add`` and await its result, again and again, until ``stop_at`` (loop time)."""
    loop = asyncio.get_running_loop()
    for i in range(limit):
        if loop.time() >= stop_at:
            return
        attempt = Attempt(started=loop.time())
        attempts.append(attempt)
        try:
            result = await producer.send_task(ADD, (i, 1))
            attempt.publish_s = loop.time() - attempt.started
            value = await result.get(timeout=15)
            attempt.outcome = "ok" if value == i + 1 else f"wrong value {value!r}"
        except BrokerUnavailable:
            attempt.publish_s = loop.time() - attempt.started
            attempt.outcome = "unavailable"
        except Exception as exc:
            attempt.outcome = repr(exc)
        attempt.total_s = loop.time() - attempt.started
        await asyncio.sleep(interval)


async def test_round_trip_through_the_proxy(proxy: TcpProxy, fault_worker: CeleryWorker,
                                            make_producer: MakeProducer) -> None:
    producer = make_producer(proxy.url())
    result = await producer.send_task(ADD, (2, 3))
    assert await result.get(timeout=10) == 5


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
async def test_connection_cut_for_3s_fails_fast_then_recovers_by_itself(
        mode: str, proxy: TcpProxy, rabbit: RabbitNode, fault_worker: CeleryWorker,
        make_producer: MakeProducer) -> None:
    """Issue 5: the connection is cut for 3 s while requests flow. Every request during the
    cut fails with BrokerUnavailable within 1 s; after the cut the producer reconnects by
    itself, with its reply consumer, and requests succeed again within 5 s."""
    producer = make_producer(proxy.url())
    await producer.connect()
    loop = asyncio.get_running_loop()
    attempts: list[Attempt] = []
    start = loop.time()
    cut_at, restore_at, stop_at = start + 1.5, start + 4.5, start + 10.5
    streams = [asyncio.create_task(_request_loop(producer, attempts, stop_at))
               for _ in range(4)]
    accepted_before = proxy.accepted

    await asyncio.sleep(cut_at - loop.time())
    proxy.cut(mode)  # type: ignore[arg-type]
    cut_at = loop.time()
    await asyncio.sleep(restore_at - loop.time())
    proxy.restore()
    restore_at = loop.time()
    await asyncio.wait_for(asyncio.gather(*streams), 40)

    before = [a for a in attempts if a.started + a.total_s < cut_at]
    during = [a for a in attempts if cut_at <= a.started < restore_at]
    after = [a for a in attempts if a.started >= restore_at]
    assert before and all(a.outcome == "ok" for a in before), before
    # every request during the cut: BrokerUnavailable, within 1 s
    assert len(during) >= 20, during
    assert {a.outcome for a in during} == {"unavailable"}, during
    assert max(a.publish_s for a in during) < 1.0, during
    # after the cut: back by itself within 5 s, and for good
    first_ok = next(i for i, a in enumerate(after) if a.outcome == "ok")
    assert after[first_ok].started + after[first_ok].total_s - restore_at < 5.0
    assert all(a.outcome == "ok" for a in after[first_ok:]), after[first_ok:]
    assert all(a.outcome == "unavailable" and a.publish_s < 1.0 for a in after[:first_ok])
    # nothing else happened to anyone: each request ended as ok or BrokerUnavailable
    assert {a.outcome for a in attempts} <= {"ok", "unavailable"}
    # it reconnected, and the reply queue has exactly one consumer again: ours
    assert proxy.accepted > accepted_before
    assert producer.connected
    assert rabbit.queue(producer.reply_queue.name) == (0, 1)


async def _wait_until(predicate: Callable[[], bool], timeout: float, what: str,
                      poll: float = 0.05) -> None:
    """Poll ``predicate`` (an event we cannot subscribe to) until true, failing at ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(poll)


async def _await_started(results: list[TaskResult], timeout: float = 10.0) -> None:
    """Wait until the worker reported STARTED for every result (task_track_started)."""
    await _wait_until(lambda: all(r.state == "STARTED" for r in results), timeout,
                      "the tasks to start")


def _worker_logged(worker: CeleryWorker, text: str) -> Callable[[], bool]:
    return lambda: text in worker.log_path.read_text(errors="replace")


async def test_broker_restart_loses_no_confirmed_fire_and_forget_task(
        rabbit: RabbitNode, fault_worker: CeleryWorker, make_producer: MakeProducer,
        redis_set: tuple[redis.Redis, str]) -> None:
    """Issue 5: the broker is stopped and restarted while fire-and-forget tasks flow. Every
    task whose publish was confirmed, before or after the restart, runs afterwards: durable
    queues, persistent messages and publisher confirms. Half the tasks go to a queue nobody
    consumes until the end, so they must survive the restart inside the broker."""
    client, key = redis_set
    parked = f"{QUEUE}.parked"
    producer = make_producer(rabbit.url, publish_timeout=2)
    await producer.connect()
    loop = asyncio.get_running_loop()
    confirmed: dict[str, list[str]] = {QUEUE: [], parked: []}
    refused: list[float] = []
    phase = {"name": "before"}
    stop = asyncio.Event()

    async def publish() -> None:
        for i in range(5000):
            if stop.is_set():
                return
            queue = parked if i % 2 else QUEUE
            token = f"{phase['name']}-{i}"
            started = loop.time()
            try:
                await producer.send_task(RECORD, (key, token), reply=False, queue=queue)
            except BrokerUnavailable:
                refused.append(loop.time() - started)
            else:
                confirmed[queue].append(token)
            await asyncio.sleep(0.01)

    publisher = asyncio.create_task(publish())
    await _wait_until(lambda: len(confirmed[parked]) >= 20, 10, "publishes before the stop")
    phase["name"] = "stopping"
    await asyncio.to_thread(rabbit.stop)
    phase["name"] = "down"
    await asyncio.to_thread(rabbit.start)
    phase["name"] = "after"
    await _wait_until(lambda: sum(t.startswith("after") for t in confirmed[parked]) >= 20, 15,
                      "publishes after the restart")
    stop.set()
    await asyncio.wait_for(publisher, 10)

    tokens = confirmed[QUEUE] + confirmed[parked]
    assert refused, "no publish was refused while the broker was down"
    assert max(refused) < 2.5, "a publish waited longer than its publish_timeout"
    before = [t for t in confirmed[parked] if t.startswith("before")]
    assert before and any(t.startswith("after") for t in confirmed[QUEUE])
    # the parked queue kept every confirmed message through the restart
    messages, consumers = rabbit.queue(parked) or (0, -1)
    assert consumers == 0 and messages >= len(confirmed[parked])
    # ... and a worker started now runs them all; the live worker ran its share too
    drain = worker_for(rabbit, [parked], "parked", concurrency=4)
    await asyncio.to_thread(drain.start)
    try:
        await _wait_until(lambda: client.scard(key) >= len(tokens), 60,
                          "every confirmed task to run", poll=0.2)
    finally:
        await asyncio.to_thread(drain.stop)
    executed = client.smembers(key)
    lost = set(tokens) - executed
    assert not lost, f"{len(lost)} confirmed tasks lost: {sorted(lost)[:10]}"


async def test_results_in_flight_survive_a_short_drop(
        proxy: TcpProxy, rabbit: RabbitNode, fault_worker: CeleryWorker,
        make_producer: MakeProducer) -> None:
    """Issue 5: tasks sent before a 3 s drop that finish during it or after it still answer
    their waiters: the reply queue is named and durable, and consumed again on reconnect."""
    producer = make_producer(proxy.url())
    during = [await producer.send_task(SLEEP, (1.0,)) for _ in range(2)]
    after = [await producer.send_task(SLEEP, (4.5,)) for _ in range(2)]
    waiters = [asyncio.create_task(r.get(timeout=30)) for r in during + after]
    await _await_started(during + after)
    loop = asyncio.get_running_loop()
    with proxy.down():
        cut_at = loop.time()
        # the short tasks finish while we are away: their replies wait in our queue
        for result in during:
            await _wait_until(_worker_logged(fault_worker, f"[{result.task_id}] succeeded"),
                              10, "the worker to finish during the drop")
        assert not producer.connected
        assert not any(w.done() for w in waiters), "a waiter ended because of the drop"
        await asyncio.sleep(max(0.0, cut_at + 3.0 - loop.time()))
    restored_at = loop.time()
    assert await asyncio.wait_for(asyncio.gather(*waiters[:2]), 5) == [1.0, 1.0]
    assert loop.time() - restored_at < 5
    assert await asyncio.wait_for(asyncio.gather(*waiters[2:]), 10) == [4.5, 4.5]
    assert producer.pending == 0 or all(r.ready() for r in during + after)


async def test_result_that_cannot_arrive_times_out_naming_the_task(
        proxy: TcpProxy, rabbit: RabbitNode, fault_worker: CeleryWorker,
        make_producer: MakeProducer) -> None:
    """Where a result truly cannot arrive (here its reply queue expired during the drop, so
    the worker's reply went nowhere), get() raises TaskTimeout naming the task at its timeout,
    and the producer carries on with a fresh reply queue."""
    producer = make_producer(proxy.url())
    result = await producer.send_task(SLEEP, (0.2,))
    with proxy.down():
        rabbit.delete_queue(producer.reply_queue.name)
        await _wait_until(_worker_logged(fault_worker, f"[{result.task_id}] succeeded"), 10,
                          "the worker to finish during the drop")
    await _wait_until(lambda: producer.connected, 5, "the producer to reconnect")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TaskTimeout) as info:
        await result.get(timeout=2)
    assert 2.0 <= loop.time() - started < 3.0
    assert info.value.task_id == result.task_id and result.task_id in str(info.value)
    assert await (await producer.send_task(ADD, (1, 1))).get(timeout=10) == 2


async def test_reply_queue_deleted_under_us_is_restored_with_its_consumer(
        rabbit: RabbitNode, fault_worker: CeleryWorker, make_producer: MakeProducer) -> None:
    """If the reply queue vanishes while we consume it (an operator deletes it), the broker
    cancels our consumer; the producer starts over by itself: the queue and its one consumer
    come back, and results flow again."""
    producer = make_producer(rabbit.url)
    assert await (await producer.send_task(ADD, (1, 1))).get(timeout=10) == 2
    name = producer.reply_queue.name
    rabbit.delete_queue(name)
    await _wait_until(lambda: rabbit.queue(name) == (0, 1), 10,
                      "the reply queue to come back with our consumer", poll=0.1)
    assert await (await producer.send_task(ADD, (2, 2))).get(timeout=10) == 4


async def test_worker_killed_mid_task_times_out_and_producer_stays_healthy(
        rabbit: RabbitNode, make_producer: MakeProducer) -> None:
    """Issue 5: the worker is SIGKILLed mid-task. Waiters get TaskTimeout naming their task at
    their timeout; the producer stays connected and serves a fresh worker at once."""
    queue = f"{QUEUE}.victim"
    victim = worker_for(rabbit, [queue], "victim", concurrency=2)
    fresh = worker_for(rabbit, [queue], "fresh", concurrency=1)
    await asyncio.to_thread(victim.start)
    try:
        producer = make_producer(rabbit.url)
        results = [await producer.send_task(SLEEP, (60,), queue=queue) for _ in range(2)]
        await _await_started(results)
        await asyncio.to_thread(victim.kill)
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcomes = await asyncio.gather(*(r.get(timeout=2) for r in results),
                                        return_exceptions=True)
        assert 2.0 <= loop.time() - started < 3.0
        for result, outcome in zip(results, outcomes, strict=True):
            assert isinstance(outcome, TaskTimeout), outcome
            assert outcome.task_id == result.task_id and result.task_id in str(outcome)
        assert producer.connected
        await asyncio.to_thread(fresh.start)
        assert await (await producer.send_task(ADD, (2, 2), queue=queue)).get(timeout=15) == 4
    finally:
        await asyncio.to_thread(victim.kill)
        await asyncio.to_thread(fresh.stop)


async def test_resource_alarm_bounds_publishes_then_recovers(
        rabbit: RabbitNode, fault_worker: CeleryWorker, make_producer: MakeProducer) -> None:
    """Issue 5: under a memory alarm (connection.blocked) every publish waits at most
    publish_timeout, then raises BrokerUnavailable; nothing hangs. Once the alarm clears,
    publishes succeed again."""
    producer = make_producer(rabbit.url, publish_timeout=1.5)
    assert await (await producer.send_task(ADD, (1, 2))).get(timeout=10) == 3
    await asyncio.to_thread(rabbit.raise_memory_alarm)
    loop = asyncio.get_running_loop()

    async def timed(**options: object) -> tuple[str, float]:
        started = loop.time()
        try:
            await producer.send_task(ADD, (1, 2), **options)  # type: ignore[arg-type]
        except BrokerUnavailable:
            return "unavailable", loop.time() - started
        return "ok", loop.time() - started

    try:
        outcomes = [await timed() for _ in range(2)]
        outcomes += await asyncio.gather(*(timed(reply=bool(i % 2)) for i in range(20)))
        outcomes += [await timed(reply=False)]
    finally:
        await asyncio.to_thread(rabbit.clear_memory_alarm)
    assert {o for o, _ in outcomes} == {"unavailable"}, outcomes
    assert max(t for _, t in outcomes) < 1.5 + 0.5, outcomes
    # the alarm is gone: publishing and results work again
    recovered_at = loop.time()
    assert await (await producer.send_task(ADD, (2, 2))).get(timeout=10) == 4
    assert loop.time() - recovered_at < 5


async def test_close_leaves_no_task_timer_socket_or_consumer(
        rabbit: RabbitNode, fault_worker: CeleryWorker, client_app: Celery) -> None:
    """close() cancels and awaits everything it started: no task, no timer, no socket is left
    in the loop, the broker shows no consumer (the reply queue is gone), and waiters fail with
    BrokerUnavailable rather than hang."""
    loop = asyncio.get_running_loop()
    before = _loop_footprint(loop)
    producer = Producer(client_app, broker_url=rabbit.url)
    assert await (await producer.send_task(ADD, (1, 1))).get(timeout=10) == 2
    pending = await producer.send_task(SLEEP, (2,))
    assert rabbit.queue(producer.reply_queue.name) == (0, 1)
    await asyncio.wait_for(producer.close(), 6)
    await producer.close()  # idempotent
    assert _loop_footprint(loop) == before
    assert (rabbit.queue(producer.reply_queue.name) or (0, 0))[1] == 0
    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(pending.get(timeout=5), 1)


@pytest.mark.parametrize("fault", ["refuse", "blackhole", "freeze"])
async def test_close_during_an_outage_returns_promptly_and_leaves_nothing(
        fault: str, proxy: TcpProxy, rabbit: RabbitNode, client_app: Celery) -> None:
    """close() while the broker is unreachable (reconnecting, stuck connecting, or a silent
    partition that swallows the Connection.Close) still returns within its bound, clean."""
    loop = asyncio.get_running_loop()
    before = _loop_footprint(loop)
    producer = Producer(client_app, broker_url=proxy.url(), connect_timeout=2)
    await producer.connect()
    if fault == "freeze":
        proxy.freeze()
    else:
        proxy.cut(fault)  # type: ignore[arg-type]
        await _wait_until(lambda: not producer.connected, 2, "the producer to see the cut")
    await asyncio.sleep(0.3)  # let it be in the middle of reconnecting
    started = loop.time()
    await asyncio.wait_for(producer.close(), 8)
    assert loop.time() - started < 6
    proxy.restore()
    assert _loop_footprint(loop) == before


def _loop_footprint(loop: asyncio.AbstractEventLoop) -> tuple[int, int, int]:
    """Tasks, live timers and registered sockets of ``loop``: what a leak would grow."""
    timers = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]
    selector = getattr(loop, "_selector", None)
    sockets = len(selector.get_map()) if selector is not None else 0
    return len(asyncio.all_tasks(loop)), len(timers), sockets


async def test_overload_bound_refuses_new_waits_at_once(
        rabbit: RabbitNode, fault_worker: CeleryWorker, make_producer: MakeProducer) -> None:
    """Past ``max_pending`` in-flight waits, a new waiting send raises Overloaded (a
    BrokerUnavailable) at once, without publishing; fire-and-forget still goes through, and
    capacity comes back as results arrive or are abandoned."""
    producer = make_producer(rabbit.url, max_pending=20)
    held = [await producer.send_task(SLEEP, (0.5,)) for _ in range(20)]
    assert producer.pending == 20
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Overloaded) as info:
        await producer.send_task(ADD, (1, 1))
    assert loop.time() - started < 0.1
    assert isinstance(info.value, BrokerUnavailable) and info.value.retry_after > 0
    assert "20" in str(info.value)
    assert (await producer.send_task(ADD, (1, 1), reply=False)).task_id
    # results that arrive free their slots
    assert await asyncio.gather(*(r.get(timeout=30) for r in held)) == [0.5] * 20
    assert producer.pending == 0
    more = [await producer.send_task(ADD, (i, 0)) for i in range(20)]
    # ... and so do abandoned ones
    del more
    gc.collect()
    assert producer.pending == 0
    assert await (await producer.send_task(ADD, (2, 3))).get(timeout=10) == 5


async def test_silent_partition_is_detected_and_survived(
        proxy: TcpProxy, rabbit: RabbitNode, fault_worker: CeleryWorker,
        make_producer: MakeProducer) -> None:
    """A silent partition (no FIN, no RST: bytes just stop) is noticed without waiting for the
    heartbeat: the first publish fails at its publish_timeout, the producer probes the broker,
    gets no answer and drops the connection, so later publishes fail fast; once the network
    is back it reconnects by itself."""
    producer = make_producer(proxy.url(), publish_timeout=1.0, heartbeat=60)
    assert await (await producer.send_task(ADD, (1, 1))).get(timeout=10) == 2
    loop = asyncio.get_running_loop()
    proxy.freeze()
    try:
        started = loop.time()
        with pytest.raises(BrokerUnavailable):
            await producer.send_task(ADD, (1, 2))
        assert loop.time() - started < 1.5
        await _wait_until(lambda: not producer.connected, 3,
                          "the producer to give up the dead connection")
        for _ in range(5):
            started = loop.time()
            with pytest.raises(BrokerUnavailable):
                await producer.send_task(ADD, (1, 3))
            assert loop.time() - started < 0.2
    finally:
        proxy.restore()
    await _wait_until(lambda: producer.connected, 6, "the producer to reconnect")
    assert await (await producer.send_task(ADD, (2, 2))).get(timeout=10) == 4
