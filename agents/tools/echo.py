"""The ``echo`` tool: returns its input; the no-op tool for diagnostics and benchmarks."""

from __future__ import annotations

from typing import Any

from agents.tools.base import Tool, ToolContext

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "maxLength": 10_000, "description": "Text to get back."}
    },
    "required": ["text"],
    "additionalProperties": False,
}


def run(arguments: dict[str, Any], context: ToolContext) -> str:
    """Return ``arguments["text"]`` unchanged."""
    text: str = arguments["text"]
    return text


TOOL = Tool(
    name="echo",
    description="Return the given text unchanged (a diagnostic tool).",
    parameters=PARAMETERS,
    run=run,
    time_limit=5.0,
    default_enabled=False,
)
