"""What a run does: the ab load profiles, how many repetitions, the memory test's size."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """One ab load: ``ab -n requests -c concurrency``, bounded by ``time_limit`` seconds."""

    name: str
    requests: int
    concurrency: int
    time_limit: float


@dataclass(frozen=True)
class Plan:
    profiles: tuple[Profile, ...]
    runs: int
    warmup: Profile
    memory_requests: int
    #: Bound on waiting for the worker to drain the queue after a fire-and-forget run.
    drain_timeout: float
    smoke: bool = False


#: The seed's published command: ``ab -n 1000 -c 500``.
SEED = Profile("seed", 1000, 500, time_limit=120)
#: Ten times longer, same concurrency: steadier numbers than the seed's short burst.
LONG = Profile("long", 10000, 500, time_limit=120)

FULL = Plan(profiles=(SEED, LONG), runs=3, warmup=Profile("warmup", 500, 100, time_limit=60),
            memory_requests=10000, drain_timeout=120)

SMOKE = Plan(profiles=(Profile("smoke", 200, 50, time_limit=30),), runs=1,
             warmup=Profile("warmup", 50, 10, time_limit=30), memory_requests=300,
             drain_timeout=30, smoke=True)
