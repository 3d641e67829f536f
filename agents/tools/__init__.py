"""Tools the model may call: python, fetch_url, web_search, recall and echo.

The interface for the turn loop and the Django side: `configure` once at start-up, pick
`offered_tools` for a conversation and send their `tool_specs`; for each call, `get_tool`,
`parse_arguments`, ``tool.run(arguments, context)`` (with `ToolFailure` for clean failures),
then `truncate_result` to ``config.max_result_chars``. Moonshot's builtin ``$web_search``
calls are recognised by `is_builtin_web_search` and answered by `builtin_web_search_result`.
"""

from __future__ import annotations

from agents.tools.base import (
    BUILTIN_WEB_SEARCH,
    MAX_TOOLS,
    ArgumentError,
    RecallHit,
    Tool,
    ToolConfig,
    ToolContext,
    ToolFailure,
    current_config,
    is_builtin_web_search,
    parse_arguments,
    truncate_result,
    unknown_tool_message,
)
from agents.tools.registry import REGISTRY, configure, get_tool, offered_tools, tool_specs
from agents.tools.search import builtin_web_search_result

__all__ = [
    "BUILTIN_WEB_SEARCH",
    "MAX_TOOLS",
    "REGISTRY",
    "ArgumentError",
    "RecallHit",
    "Tool",
    "ToolConfig",
    "ToolContext",
    "ToolFailure",
    "builtin_web_search_result",
    "configure",
    "current_config",
    "get_tool",
    "is_builtin_web_search",
    "offered_tools",
    "parse_arguments",
    "tool_specs",
    "truncate_result",
    "unknown_tool_message",
]
