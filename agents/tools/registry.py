"""Which tools exist, which of them a conversation is offered, and their request specs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agents.tools import echo, fetch, python_tool, recall, search
from agents.tools.base import MAX_TOOLS, Tool, ToolConfig, current_config, set_config


def _build(config: ToolConfig) -> dict[str, Tool]:
    # Registry order is the order tools are offered in: a stable prompt prefix caches better.
    tools = [
        python_tool.build(config.python_limits),
        fetch.TOOL,
        search.TOOL,
        recall.TOOL,
        echo.TOOL,
    ]
    return {tool.name: tool for tool in tools}


REGISTRY: dict[str, Tool] = _build(current_config())


def configure(config: ToolConfig) -> None:
    """Set the deployment configuration (once, at start-up, from the Django side).

    Also rebuilds the registry's tools whose limits follow the configuration (the python
    tool's time limit covers the sandbox's wall-clock limit).
    """
    set_config(config)
    REGISTRY.update(_build(config))


def get_tool(name: str) -> Tool | None:
    """The registered tool called `name`, or None."""
    return REGISTRY.get(name)


def offered_tools(enabled: Iterable[str], config: ToolConfig | None = None) -> list[Tool]:
    """The enabled tools this deployment can offer, in registry order, at most 128.

    Unknown names are ignored; a tool whose `unavailable` gives a reason is left out.
    """
    config = config or current_config()
    wanted = set(enabled)
    offered = [
        tool
        for name, tool in REGISTRY.items()
        if name in wanted and tool.unavailable(config) is None
    ]
    return offered[:MAX_TOOLS]


def tool_specs(tools: Iterable[Tool], config: ToolConfig | None = None) -> list[dict[str, Any]]:
    """The request's ``tools`` list for `tools` under `config` (default: current)."""
    config = config or current_config()
    return [tool.spec(config) for tool in tools]
