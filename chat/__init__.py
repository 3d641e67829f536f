"""The Django side of Glassbox: settings, models, views, consumers, tasks."""

from __future__ import annotations

from chat.celery import app as celery_app

__all__ = ["celery_app"]
