"""The Celery app: tool execution (issue 3) and the sweeper of dead turns."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

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
