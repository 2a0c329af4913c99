"""Benchmark runner for tcelery-req-handler: ``python -m bench`` (see bench/README.md).

It starts a shared Celery worker and four web servers one after another (a Tornado hello
world, a hand-written executor bridge, Flower's task API, and this library's example app),
drives each with ``ab`` on loopback, and writes Markdown, JSON and a PNG chart to
``bench/results/``.
"""
