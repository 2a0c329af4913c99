"""The ``cache=<seconds>`` route option: SUCCESS results served again for the same input.

The key is the task name plus the canonical JSON of its args and kwargs (sorted keys, no
spaces), hashed; the value is the result in kombu's JSON (datetimes, UUIDs and decimals
survive). Only SUCCESS results are stored, for ``ttl`` seconds, in the result backend itself
(Redis: ``tcelery-cache-<sha256>`` after any ``global_keyprefix``), so every process shares
the cache. Backends that cannot hold it are refused when the route is built.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from kombu.utils import json as kombu_json

from .backends import ResultSource

#: Cache commands in flight at once on one result source. Its Redis client pools a bounded
#: number of connections (redis-py: 100, one of them held by the pub/sub reader) and fails a
#: command past them (MaxConnectionsError): a group's lookups, one per member, would take
#: them all at once and answer 503 from about 100 members on.
MAX_IN_FLIGHT = 32
_in_flight: weakref.WeakKeyDictionary[ResultSource, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())


def _slot(source: ResultSource) -> asyncio.Semaphore:
    slot = _in_flight.get(source)
    if slot is None:
        slot = _in_flight[source] = asyncio.Semaphore(MAX_IN_FLIGHT)
    return slot


class ResultCache:
    """One route's cache policy: how long a result stays fresh."""

    __slots__ = ("ttl",)

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl

    @staticmethod
    def key(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        canonical = json.dumps([name, list(args), dict(kwargs)], sort_keys=True,
                               separators=(",", ":"), default=str, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    async def get(self, source: ResultSource, name: str, args: Sequence[Any],
                  kwargs: Mapping[str, Any]) -> tuple[bool, Any]:
        """``(True, value)`` on a hit, ``(False, None)`` on a miss."""
        async with _slot(source):
            payload = await source.cache_get(self.key(name, args, kwargs))
        if payload is None:
            return False, None
        return True, kombu_json.loads(payload)

    async def put(self, source: ResultSource, name: str, args: Sequence[Any],
                  kwargs: Mapping[str, Any], value: Any) -> None:
        async with _slot(source):
            await source.cache_set(self.key(name, args, kwargs),
                                   kombu_json.dumps(value).encode(), self.ttl)
