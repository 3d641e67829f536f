"""The ``recall`` tool: search the user's past reasoning and cite where each passage came from.

The search itself is the Django side's (it knows what this user may see) and arrives as
``ToolContext.recall``; this module only words the request and the answer.
"""

from __future__ import annotations

from typing import Any

from agents.tools.base import RecallHit, Tool, ToolContext, ToolFailure

DEFAULT_LIMIT = 5

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {
            "type": "string",
            "minLength": 1,
            "maxLength": 500,
            "description": "What to look for in past reasoning.",
        },
        "limit": {
            "type": "integer",
            "minimum": 1,
            "maximum": 20,
            "description": f"How many passages to return (default {DEFAULT_LIMIT}).",
        },
    },
    "required": ["query"],
    "additionalProperties": False,
}

DESCRIPTION = (
    "Search the reasoning from this user's earlier conversations and get the best matching "
    "passages, each cited by conversation, message and step."
)


def run(arguments: dict[str, Any], context: ToolContext) -> str:
    """Look up ``arguments["query"]`` through the injected recall function."""
    if context.recall is None:
        raise ToolFailure("Recall is not available in this conversation.")
    # int(): JSON Schema counts 5.0 as an integer.
    limit = int(arguments.get("limit", DEFAULT_LIMIT))
    hits = context.recall(arguments["query"], limit)[:limit]
    return format_hits(hits)


def format_hits(hits: list[RecallHit]) -> str:
    """One line per hit, led by its citation; step_index is shown as given."""
    if not hits:
        return "No past reasoning matched."
    return "\n".join(_format_hit(hit) for hit in hits)


def _format_hit(hit: RecallHit) -> str:
    citation = (
        f"[conversation {hit.conversation_id} · message {hit.message_id} · step {hit.step_index}]"
    )
    # One hit per line keeps citations unambiguous, so line breaks inside a snippet go.
    snippet = " ".join(hit.snippet.split())
    title = " ".join(hit.title.split()) or "Untitled"
    return f"{citation} {title}: {snippet}"


TOOL = Tool(
    name="recall",
    description=DESCRIPTION,
    parameters=PARAMETERS,
    run=run,
    time_limit=15.0,
)
