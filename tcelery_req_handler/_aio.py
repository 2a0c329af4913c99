"""Small asyncio helpers for the hot path: bounded waits that cost one timer, no task."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

T = TypeVar("T")

_TIMED_OUT: Any = object()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


async def wait_bounded(future: asyncio.Future[T], timeout: float) -> T:
    """Await ``future`` for at most ``timeout`` seconds without cancelling it.

    Raises ``TimeoutError`` when time runs out; ``future`` itself stays untouched, so it can be
    awaited again. Cheaper than ``wait_for(shield(...))``: one waiter future and one timer.
    The TimeoutError is raised fresh, so it references no waiter and keeps nothing alive.
    """
    if future.done():
        return future.result()
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = loop.create_future()

    def relay(done: asyncio.Future[T]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    future.add_done_callback(relay)
    timer = loop.call_later(timeout, _expire, waiter)
    try:
        outcome = await waiter
    finally:
        timer.cancel()
        future.remove_done_callback(relay)
    if outcome is _TIMED_OUT:
        raise TimeoutError
    return future.result()


async def wait_owned(future: asyncio.Future[T], timeout: float) -> T:
    """Await a future that nobody else awaits, for at most ``timeout`` seconds.

    The timer resolves ``future`` itself with a marker, so the wait costs one timer and
    nothing else; a confirm or result arriving later finds it done and is dropped. Raises
    ``TimeoutError`` when time runs out.
    """
    if future.done():
        return future.result()
    timer = asyncio.get_running_loop().call_later(timeout, _expire, future)
    try:
        outcome = await future
    finally:
        timer.cancel()
    if outcome is _TIMED_OUT:
        raise TimeoutError
    return outcome
