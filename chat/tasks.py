"""Celery tasks. They take ids, are idempotent, and log and return when a row is gone."""

from __future__ import annotations

import logging

from celery import shared_task

from chat.actions import do_sweep_interrupted

logger = logging.getLogger(__name__)


@shared_task(soft_time_limit=30, time_limit=60)
def sweep_interrupted_turns() -> int:
    """Mark turns whose runner died (no heartbeat) as interrupted, keeping their text."""
    swept = do_sweep_interrupted()
    if swept:
        logger.info("marked %d turn(s) interrupted", swept)
    return swept
