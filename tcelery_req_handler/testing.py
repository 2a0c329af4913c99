"""A kit for testing an app's routes with no broker: the embedded mode, made easy.

* ``async with embedded(celery_app) as producer:`` runs the app's tasks in a worker thread
  of the test process and installs that producer for every route (then puts back the one
  installed before);
* a pytest plugin: ``pytest_plugins = ["tcelery_req_handler.testing"]`` gives the fixture
  ``tcelery_producer``, built from your fixture ``tcelery_app`` (the Celery app);
* :class:`EmbeddedHTTPTestCase`, for Tornado's ``AsyncHTTPTestCase``;
* ``await producer.wait_idle()`` waits until every queued task has run (fire-and-forget
  routes, groups, countdowns).

The app's ``broker_url`` and ``result_backend`` are switched to the embedded ones for good:
use an app object made for the tests, or accept that it no longer talks to a broker.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from celery import Celery
from tornado.testing import AsyncHTTPTestCase

from . import producer as _producer
from .producer import Producer

__all__ = ["EmbeddedHTTPTestCase", "embedded"]


@contextlib.asynccontextmanager
async def embedded(celery_app: Celery, *, install: bool = True,
                   **options: Any) -> AsyncIterator[Producer]:
    """A started embedded producer for ``celery_app``; installed as the process-wide one
    while the block runs (``install=False`` leaves the installed one alone). ``options``
    are :class:`~tcelery_req_handler.Producer` options."""
    producer = Producer(celery_app, broker_url="memory://", **options)
    previous = _producer._default
    if install:
        _producer._set_default(producer)
    try:
        await producer.connect()
        yield producer
    finally:
        await producer.close()
        if install:
            _producer._set_default(previous)


class EmbeddedHTTPTestCase(AsyncHTTPTestCase):
    """``AsyncHTTPTestCase`` with the embedded mode: set ``celery_app`` and write
    ``get_app()``; ``self.producer`` is installed for every route, ``self.wait_idle()``
    waits for the queued tasks."""

    celery_app: Celery
    producer_options: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, methodName: str = "runTest") -> None:
        # pytest >= 8.2 makes an instance with unittest's default name, which Tornado < 6.4.1
        # looks up at once (tornadoweb/tornado#3375): give it something to find.
        if methodName == "runTest" and not hasattr(self, methodName):
            self.__dict__[methodName] = lambda: None
        super().__init__(methodName)

    def setUp(self) -> None:
        # Built before get_app() runs: the routes then see the embedded result backend.
        self.producer = Producer(self.celery_app, broker_url="memory://",
                                 **self.producer_options)
        self._previous = _producer._default
        _producer._set_default(self.producer)
        super().setUp()
        self.io_loop.run_sync(self.producer.connect)

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.producer.close)
        _producer._set_default(self._previous)
        super().tearDown()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until every queued task has run."""
        self.io_loop.run_sync(lambda: self.producer.wait_idle(timeout), timeout=timeout + 1)


try:
    import pytest
except ImportError:  # pragma: no cover - the plugin needs pytest; the rest does not
    pass
else:
    try:  # pytest-asyncio's own decorator: a plain @pytest.fixture coroutine is only run
        # in its "auto" mode, and "strict" is its default
        from pytest_asyncio import fixture as _async_fixture
    except ImportError:  # pragma: no cover - another plugin runs async fixtures
        _async_fixture = pytest.fixture  # type: ignore[assignment]

    @_async_fixture
    async def tcelery_producer(tcelery_app: Celery) -> AsyncIterator[Producer]:
        """An embedded producer for your ``tcelery_app`` fixture, installed for every route
        (needs pytest-asyncio, or another plugin that runs async fixtures)."""
        async with embedded(tcelery_app) as producer:
            yield producer
