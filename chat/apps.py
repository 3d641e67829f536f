from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Glassbox chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chat import checks  # noqa: F401 - registers the system checks
        from chat.tooling import configure_tools

        configure_tools()
        post_migrate.connect(_create_tool_settings, sender=self)


def _create_tool_settings(**kwargs: Any) -> None:
    """One switch per installed tool in the admin, starting at the tool's default."""
    from agents.tools import REGISTRY
    from chat.models import ToolSetting

    for tool in REGISTRY.values():
        ToolSetting.objects.get_or_create(
            name=tool.name, defaults={"enabled": tool.default_enabled}
        )
