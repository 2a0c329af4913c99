"""Seed 002's backend, on this library: the Celery app ``celery -A backend.grouptasks worker``
runs. ``add`` sums two integers after a random delay; results live in Redis."""

from __future__ import annotations

from celery import Celery

from . import celeryconfig

app: Celery = Celery("backend.grouptasks", include=["backend.grouptasks.tasks"])
app.config_from_object(celeryconfig)

__all__ = ["app"]
