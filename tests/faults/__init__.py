"""Fault-injection helpers for the reliability tests (issue 5).

* :mod:`tests.faults.proxy`: a TCP proxy in front of RabbitMQ that a test can cut, black-hole
  or freeze, and restore;
* :mod:`tests.faults.rabbit_node`: a private RabbitMQ node on free ports that a test can stop,
  restart (keeping its data) and put under a resource alarm;
* :mod:`tests.faults.fault_app`: the Celery app the fault tests' own workers run;
* :mod:`tests.faults.common`: the run's queue names and ``worker_for`` (a fault worker);
* :mod:`tests.faults.fixtures`: a pytest plugin (``pytest_plugins``) sharing one node, one
  proxy and one worker per session;
* :mod:`tests.faults.http_load`: an asyncio HTTP/1.1 client, and an ``ab``-like load runner.
"""
