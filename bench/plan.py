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
    #: Latency test: recorded sequential requests per server, after unrecorded warm-up ones.
    latency_requests: int = 300
    latency_warmup: int = 10
    #: Event-stream test: streams open at once, streams per task, PROGRESS states per task
    #: and the seconds between them.
    streams: int = 10000
    streams_per_task: int = 100
    stream_steps: int = 5
    stream_interval: float = 0.1
    #: Ceiling test: tasks queued before the worker starts on them.
    ceiling_tasks: int = 5000


#: The seed's published command: ``ab -n 1000 -c 500``.
SEED = Profile("seed", 1000, 500, time_limit=120)
#: Ten times longer, same concurrency: steadier numbers than the seed's short burst.
LONG = Profile("long", 10000, 500, time_limit=120)

FULL = Plan(profiles=(SEED, LONG), runs=3, warmup=Profile("warmup", 500, 100, time_limit=60),
            memory_requests=10000, drain_timeout=120)

SMOKE = Plan(profiles=(Profile("smoke", 200, 50, time_limit=30),), runs=1,
             warmup=Profile("warmup", 50, 10, time_limit=30), memory_requests=300,
             drain_timeout=30, smoke=True, latency_requests=30, latency_warmup=3,
             streams=200, streams_per_task=50, stream_steps=3, stream_interval=0.05,
             ceiling_tasks=300)
