"""Which tools this deployment offers: the registry, the admin's switches, and the machine.

The admin switches a tool off in `ToolSetting`; a tool the machine cannot run safely (no
sandbox, no search backend) is never offered, whatever the switch says (fail closed).
"""

from __future__ import annotations

from django.conf import settings

from agents.tools import REGISTRY, Tool, ToolConfig, configure, current_config
from chat.models import Conversation, ToolSetting


def configure_tools() -> None:
    """Hand the deployment's tool configuration to `agents.tools` (once, at start-up)."""
    configure(
        ToolConfig(
            searxng_url=settings.GLASSBOX_SEARXNG_URL,
            provider=settings.GLASSBOX_PROVIDER,
            max_result_chars=settings.GLASSBOX_TOOL_RESULT_CHARS,
        )
    )


def deployment_tools() -> list[Tool]:
    """Tools switched on by the admin (or on by default) that this machine can run."""
    switches = dict(ToolSetting.objects.values_list("name", "enabled"))
    config = current_config()
    return [
        tool
        for tool in REGISTRY.values()
        if switches.get(tool.name, tool.default_enabled) and tool.unavailable(config) is None
    ]


def tool_choices(conversation: Conversation) -> list[tuple[str, str, bool, str]]:
    """(name, description, on for this conversation, reason it is unavailable) per tool."""
    offered = {tool.name for tool in deployment_tools()}
    config = current_config()
    choices = []
    for tool in REGISTRY.values():
        reason = tool.unavailable(config) or (
            "" if tool.name in offered else "switched off by an admin"
        )
        on = tool.name in offered and tool.name not in conversation.disabled_tools
        choices.append((tool.name, tool.description.split(".")[0], on, reason))
    return choices
