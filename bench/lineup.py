"""The servers under test, as data: how to start each one and which URLs to drive.

Adding a server means adding a :class:`ServerSpec` to :func:`lineup`; the orchestrator and the
report only know these specs. A spec whose prerequisites are missing (the example app before
it lands, for instance) says why in ``unavailable()`` and is reported as skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import BROKER_URL, EXAMPLE_DIR, LIST_USERS_REDIS, REDIS_URL, ROOT

WAITING = "waiting"
FIRE_AND_FORGET = "fire_and_forget"
BOUND = "bound"  # hello world: no task at all
MODES = (WAITING, FIRE_AND_FORGET, BOUND)


@dataclass(frozen=True)
class Endpoint:
    """One URL of a server, and what it does: wait for the task, fire and forget, or neither."""

    mode: str
    path: str
    #: A JSON body makes ab POST it (Flower's task API takes POST only).
    post_json: bytes | None = None


@dataclass(frozen=True)
class ServerSpec:
    key: str
    label: str
    endpoints: tuple[Endpoint, ...]
    #: Builds the command line for a port and the scratch directory.
    argv: Callable[[int, Path], list[str]]
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    #: A path that answers once the server is up (any status will do).
    ready_path: str = "/"
    #: How long the server may take to come up.
    start_timeout: float = 30.0
    unavailable: Callable[[], str | None] = lambda: None


def _module(name: str) -> Callable[[int, Path], list[str]]:
    def argv(port: int, tmp: Path) -> list[str]:
        return [sys.executable, "-m", name, "--port", str(port)]
    return argv


def _hello_argv(port: int, tmp: Path) -> list[str]:
    return [*_module("bench.servers.hello")(port, tmp), "--payload-file", str(tmp / "payload.json")]


def _flower_argv(port: int, tmp: Path) -> list[str]:
    # --enable_events=False: Flower otherwise switches task events on in the shared worker,
    # which would then cost every later server too. It only makes Flower faster.
    return [sys.executable, "-m", "celery", "-A", "bench.servers.flower_app", "flower",
            f"--port={port}", "--address=127.0.0.1", "--enable_events=False",
            "--logging=warning"]


def _example_argv(port: int, tmp: Path) -> list[str]:
    return [sys.executable, "main.py", "--port", str(port)]


def example_missing() -> str | None:
    """Why ours (the example app on the library's routes) cannot run yet, or None."""
    if not (EXAMPLE_DIR / "main.py").exists():
        return "example/main.py does not exist yet"
    try:
        import tcelery_req_handler
    except ImportError as exc:  # pragma: no cover - the library is the repo itself
        return f"tcelery_req_handler does not import: {exc}"
    missing = [n for n in ("tcelery_routes", "tcelery_async_routes")
               if not hasattr(tcelery_req_handler, n)]
    if missing:
        return f"tcelery_req_handler has no {', '.join(missing)} yet"
    return None


#: ``timeout`` bounds Flower's ``AsyncResult.get`` (its default is to wait forever, and one
#: lost result then holds one of its few executor threads for good).
_FLOWER_APPLY_BODY = b'{"timeout": 30}'
_FLOWER_ASYNC_BODY = b"{}"


def lineup(example_env: dict[str, str]) -> list[ServerSpec]:
    """(a) hello world, (b) executor bridge, (c) Flower, (d) ours: the order they run in."""
    return [
        ServerSpec("hello", "Tornado hello world (bound)",
                   (Endpoint(BOUND, "/v1/user"),), _hello_argv),
        ServerSpec("bridge", "hand-written executor bridge",
                   (Endpoint(WAITING, "/v1/user"), Endpoint(FIRE_AND_FORGET, "/v1/async_user")),
                   _module("bench.servers.bridge")),
        ServerSpec("flower", "Flower task API (Redis backend)",
                   (Endpoint(WAITING, f"/api/task/apply/{LIST_USERS_REDIS}", _FLOWER_APPLY_BODY),
                    Endpoint(FIRE_AND_FORGET, f"/api/task/async-apply/{LIST_USERS_REDIS}",
                             _FLOWER_ASYNC_BODY)),
                   _flower_argv, env={"FLOWER_UNAUTHENTICATED_API": "true",
                                      "BENCH_REDIS_URL": REDIS_URL},
                   ready_path="/healthcheck", start_timeout=60.0),
        ServerSpec("ours", "tcelery-req-handler example",
                   (Endpoint(WAITING, "/v1/user"), Endpoint(FIRE_AND_FORGET, "/v1/async_user")),
                   _example_argv, cwd=EXAMPLE_DIR,
                   env={"BROKER_URL": BROKER_URL, **example_env},
                   unavailable=example_missing),
    ]
