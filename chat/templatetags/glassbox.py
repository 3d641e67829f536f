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
    """Arguments for reading: multi-line strings (code, mostly) as real lines, not \\n."""
    if not isinstance(call.arguments, dict):
        return call.arguments_raw
    parts = []
    for key, value in call.arguments.items():
        if isinstance(value, str) and "\n" in value:
            parts.append(f"{key}:\n{value}")
        else:
            parts.append(f"{key}: {json.dumps(value, ensure_ascii=False)}")
    return "\n".join(parts)


@register.filter
def started_ms(call: ToolCall) -> int | str:
    return int(call.started_at.timestamp() * 1000) if call.started_at else ""


@register.filter
def elapsed(call: ToolCall) -> int:
    if call.started_at is None:
        return 0
    end = call.finished_at or timezone.now()
    return max(0, round((end - call.started_at).total_seconds()))
