"""The Celery app: tool execution (issue 3) and the sweeper of dead turns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chat.settings")

app = Celery("glassbox")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["chat"])
app.conf.beat_schedule = {
    "sweep-interrupted-turns": {"task": "chat.tasks.sweep_interrupted_turns", "schedule": 10.0},
}


def ensure_broker_folders() -> None:
    """Create the filesystem broker's folders (embedded default) before a worker or sender."""
    options = app.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        folder = options.get(key)
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)


@worker_process_init.connect
def keep_database_connections(**kwargs: Any) -> None:
    """A worker process runs one task at a time: reconnecting for each would cost more than
    the task itself (about 10 ms per tool call on PostgreSQL)."""
    from django.conf import settings
    from django.db import connections

    for connection in connections.all(initialized_only=False):
        connection.settings_dict["CONN_MAX_AGE"] = settings.WORKER_CONN_MAX_AGE
