"""The ``cache=<seconds>`` route option: SUCCESS results served again for the same input.

The key is the task name plus the canonical JSON of its args and kwargs (sorted keys, no
spaces), hashed; the value is the result in kombu's JSON (datetimes, UUIDs and decimals
survive). Only SUCCESS results are stored, for ``ttl`` seconds, in the result backend itself
(Redis: ``tcelery-cache-<sha256>`` after any ``global_keyprefix``), so every process shares
the cache. Backends that cannot hold it are refused when the route is built.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from kombu.utils import json as kombu_json

from .backends import ResultSource


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
        payload = await source.cache_get(self.key(name, args, kwargs))
        if payload is None:
            return False, None
        return True, kombu_json.loads(payload)

    async def put(self, source: ResultSource, name: str, args: Sequence[Any],
                  kwargs: Mapping[str, Any], value: Any) -> None:
        await source.cache_set(self.key(name, args, kwargs),
                               kombu_json.dumps(value).encode(), self.ttl)
