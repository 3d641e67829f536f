"""Template filters for tool cards."""

from __future__ import annotations

import json

from django import template
from django.utils import timezone

from agents.turn import summarize_arguments
from chat.models import ToolCall

register = template.Library()


@register.filter
def tool_summary(call: ToolCall) -> str:
    return summarize_arguments(call.arguments_raw)


@register.filter
def pretty_arguments(call: ToolCall) -> str:
    if call.arguments is not None:
        return json.dumps(call.arguments, indent=2, ensure_ascii=False)
    return call.arguments_raw


@register.filter
def started_ms(call: ToolCall) -> int | str:
    return int(call.started_at.timestamp() * 1000) if call.started_at else ""


@register.filter
def elapsed(call: ToolCall) -> int:
    if call.started_at is None:
        return 0
    end = call.finished_at or timezone.now()
    return max(0, round((end - call.started_at).total_seconds()))
