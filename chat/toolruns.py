"""Tool calls in the database: record, dispatch to Celery, claim, finish, time out, cancel.

Every state change is a conditional UPDATE, so a redelivered task, a late worker and the
runner's timeout can race without a call ever being finished twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from agents.tools import truncate_result
from agents.turn import PreparedCall
from chat.models import FINAL_TOOL_STATUSES, ToolCall, ToolCallStatus

logger = logging.getLogger(__name__)

# A worker that died while running a call gets it redelivered once; a second death fails it.
MAX_ATTEMPTS = 2


@contextmanager
def fast_commit() -> Iterator[None]:
    """A transaction whose commit does not wait for the disk (PostgreSQL).

    Tool-call state changes are small, frequent and safe to redo (every change is
    conditional and a lost one is re-run or timed out), so waiting for an fsync on each
    would only add milliseconds to every tool round trip.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        yield


def record_calls(
    message_id: uuid.UUID, step_index: int, calls: list[PreparedCall]
) -> list[ToolCall]:
    """Store every call of a step: invalid ones as failed, in-place ones as done, the rest
    queued for a worker."""
    now = timezone.now()
    rows = []
    for position, prepared in enumerate(calls):
        row = ToolCall(
            message_id=message_id,
            step_index=step_index,
            index=position,
            call_id=prepared.call.id,
            name=prepared.call.name[:128],
            arguments_raw=prepared.call.arguments,
            arguments=prepared.arguments,
            time_limit=prepared.tool.time_limit if prepared.tool else 0.0,
        )
        if prepared.error is not None:
            row.status, row.result, row.finished_at = ToolCallStatus.FAILED, prepared.error, now
        elif prepared.result is not None:
            row.status, row.result, row.finished_at = ToolCallStatus.DONE, prepared.result, now
        rows.append(row)
    with fast_commit():
        ToolCall.objects.bulk_create(rows)
    return rows


def dispatch(rows: Iterable[ToolCall]) -> None:
    """Send queued calls to the workers, all at once (they run in parallel)."""
    from chat.tasks import run_tool

    for row in rows:
        if row.status != ToolCallStatus.QUEUED:
            continue
        run_tool.apply_async(
            args=[str(row.id)],
            task_id=str(row.id),
            soft_time_limit=row.time_limit,
            time_limit=row.time_limit + 10,
        )


def fetch(ids: Iterable[uuid.UUID]) -> list[ToolCall]:
    return list(ToolCall.objects.filter(id__in=list(ids)))


def claim(call_id: str, worker: str) -> ToolCall | None:
    """Take a call for execution, or None when it must not run (done, cancelled, gone)."""
    with fast_commit():
        return _claim(call_id, worker)


def _claim(call_id: str, worker: str) -> ToolCall | None:
    now = timezone.now()
    rows = ToolCall.objects.filter(id=call_id)
    if rows.filter(status=ToolCallStatus.QUEUED).update(
        status=ToolCallStatus.RUNNING, started_at=now, worker=worker, attempts=F("attempts") + 1
    ):
        return rows.select_related("message__conversation").first()
    # Still "running": the worker that had it died and the broker redelivered it.
    if rows.filter(status=ToolCallStatus.RUNNING, attempts__lt=MAX_ATTEMPTS).update(
        started_at=now, worker=worker, attempts=F("attempts") + 1
    ):
        logger.warning("tool call %s redelivered after a worker died; retrying once", call_id)
        return rows.select_related("message__conversation").first()
    finish(
        call_id,
        ToolCallStatus.FAILED,
        "The worker running this tool stopped twice; the call was given up.",
        only_running=True,
    )
    return None


def finish(
    call_id: str | uuid.UUID, status: str, result: str, *, only_running: bool = False
) -> bool:
    """Store a call's outcome unless it already has one (or, optionally, is not running)."""
    allowed = (
        Q(status=ToolCallStatus.RUNNING) if only_running else ~Q(status__in=FINAL_TOOL_STATUSES)
    )
    stored, _ = truncate_result(result, settings.GLASSBOX_TOOL_STORED_CHARS)
    with fast_commit():
        return bool(
            ToolCall.objects.filter(allowed, id=call_id).update(
                status=status, result=stored, finished_at=timezone.now()
            )
        )


def time_out_overdue(ids: Iterable[uuid.UUID]) -> int:
    """Give up on calls past their limit: running too long, or never picked up."""
    now = timezone.now()
    grace = timedelta(seconds=settings.GLASSBOX_TOOL_GRACE_SECONDS)
    queue_limit = timedelta(seconds=settings.GLASSBOX_TOOL_QUEUE_TIMEOUT)
    timed_out = 0
    for row in ToolCall.objects.filter(id__in=list(ids)).exclude(status__in=FINAL_TOOL_STATUSES):
        if row.status == ToolCallStatus.RUNNING and row.started_at is not None:
            if now - row.started_at > timedelta(seconds=row.time_limit) + grace:
                timed_out += finish(
                    row.id,
                    ToolCallStatus.TIMED_OUT,
                    f"The tool ran past its {row.time_limit:g} s limit.",
                )
        elif row.status == ToolCallStatus.QUEUED and now - row.created_at > queue_limit:
            timed_out += finish(
                row.id,
                ToolCallStatus.TIMED_OUT,
                "No worker picked up this tool call in time; is a Celery worker running?",
            )
    return timed_out


def cancel(ids: Iterable[uuid.UUID]) -> list[str]:
    """Cancel calls that have not finished; returns their task ids for revoking."""
    ids = list(ids)
    pending = list(
        ToolCall.objects.filter(id__in=ids)
        .exclude(status__in=FINAL_TOOL_STATUSES)
        .values_list("id", flat=True)
    )
    ToolCall.objects.filter(id__in=pending).exclude(status__in=FINAL_TOOL_STATUSES).update(
        status=ToolCallStatus.CANCELLED, result="Stopped by the user.", finished_at=timezone.now()
    )
    return [str(pk) for pk in pending]


def model_content(row: ToolCall) -> str:
    """The tool message the model reads for a finished call."""
    if row.status == ToolCallStatus.DONE:
        text, _ = truncate_result(row.result, settings.GLASSBOX_TOOL_RESULT_CHARS)
        return text
    if row.status == ToolCallStatus.TIMED_OUT:
        return f"Error: {row.result}"
    if row.status == ToolCallStatus.CANCELLED:
        return "Error: the user stopped this tool call."
    return f"Error: {row.result}"
