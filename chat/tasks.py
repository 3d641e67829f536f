"""Celery tasks. They take ids, are idempotent, and log and return when a row is gone."""

from __future__ import annotations

import logging
import os

from asgiref.sync import async_to_sync
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from channels.layers import get_channel_layer
from django.conf import settings

from agents.tools import ToolContext, ToolFailure, get_tool
from chat import toolruns
from chat.actions import do_sweep_interrupted
from chat.models import ToolCall, ToolCallStatus
from chat.recall import recall_for_user

logger = logging.getLogger(__name__)


@shared_task(soft_time_limit=30, time_limit=60)
def sweep_interrupted_turns() -> int:
    """Mark turns whose runner died (no heartbeat) as interrupted, keeping their text."""
    swept = do_sweep_interrupted()
    if swept:
        logger.info("marked %d turn(s) interrupted", swept)
    return swept


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True)
def run_tool(self: Task, call_id: str) -> None:
    """Execute one tool call and store its outcome.

    Idempotent: a call that is already finished or cancelled does nothing; a call whose
    worker died is retried once, then failed (see `toolruns.claim`). Time limits come from
    the tool and are set per call at dispatch.
    """
    call = toolruns.claim(call_id, worker=f"{self.request.hostname}:{os.getpid()}")
    if call is None:
        _notify(call_id)
        return
    tool = get_tool(call.name)
    conversation = call.message.conversation
    context = ToolContext(
        user_id=conversation.owner_id,
        conversation_id=str(conversation.id),
        recall=lambda query, limit: recall_for_user(conversation.owner_id, query, limit),
        should_stop=lambda: _cancelled(call_id),
    )
    try:
        if tool is None:
            raise ToolFailure(f"The tool {call.name!r} is not installed on this worker.")
        status, result = ToolCallStatus.DONE, tool.run(call.arguments or {}, context)
    except ToolFailure as exc:
        status, result = ToolCallStatus.FAILED, str(exc)
    except SoftTimeLimitExceeded:
        status, result = (
            ToolCallStatus.TIMED_OUT,
            f"The tool ran past its {call.time_limit:g} s limit.",
        )
    except Exception:
        logger.exception("tool %s crashed on call %s", call.name, call_id)
        status, result = (
            ToolCallStatus.FAILED,
            f"The tool {call.name!r} crashed; see the server log.",
        )
    toolruns.finish(call_id, status, result, only_running=True)
    _notify(call_id)


def _cancelled(call_id: str) -> bool:
    return ToolCall.objects.filter(id=call_id, status=ToolCallStatus.CANCELLED).exists()


def _notify(call_id: str) -> None:
    """Wake the runner now (Redis); without Redis it finds the result at its next poll."""
    if not settings.REDIS_URL:
        return
    channel = (
        ToolCall.objects.filter(id=call_id)
        .values_list("message__runner_channel", flat=True)
        .first()
    )
    if channel:
        async_to_sync(get_channel_layer().send)(channel, {"type": "tool.changed"})
