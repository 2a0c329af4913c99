"""Version 1 of the example backend: the Celery app that ``celery -A backend.v1`` runs.

``app`` is the Celery application; its tasks live in :mod:`backend.v1.tasks` and are
registered on import (the worker imports them through ``include``).
"""

from __future__ import annotations

from celery import Celery

from . import celeryconfig

app: Celery = Celery("backend.v1", include=["backend.v1.tasks"])
app.config_from_object(celeryconfig)

__all__ = ["app"]
