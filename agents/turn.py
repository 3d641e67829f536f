"""The agent loop: stream a step, run the tools it called, send the results, repeat.

The loop owns the conversation with the model (the request history, the Kimi replay rules);
the sink (implemented on the Django side) owns persistence, publishing and tool execution.
Keeping them apart lets the loop run against any sink in tests and benchmarks, and keeps
Django out of `agents/`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agents.client import ProviderClient, StepResult
from agents.stream import ContentDelta, ReasoningDelta, StreamEvent, ToolCall
from agents.tools import (
    ArgumentError,
    Tool,
    ToolConfig,
    builtin_web_search_result,
    get_tool,
    is_builtin_web_search,
    parse_arguments,
    tool_specs,
    unknown_tool_message,
)

# Moonshot rejects a tool-call message whose reasoning is missing or empty. A step that
# called tools without visible reasoning still needs a non-empty value to replay.
NO_REASONING = "(no reasoning was shown for this step)"


@dataclass
class PreparedCall:
    """A tool call from the model, checked before anything runs.

    Exactly one of three shapes: `error` set (invalid: the message goes back to the model and
    nothing runs), `result` set (answered in place, e.g. Moonshot's server-side search), or
    `tool` and `arguments` set (to be executed by a worker).
    """

    call: ToolCall
    tool: Tool | None = None
    arguments: dict[str, Any] | None = None
    error: str | None = None
    result: str | None = None


class TurnSink(Protocol):
    """Receives everything a turn produces, in order, and runs its tools."""

    async def step_started(self, index: int) -> None: ...

    async def on_event(self, event: StreamEvent) -> None: ...

    async def step_finished(self, index: int, result: StepResult) -> None: ...

    async def run_tool_calls(self, index: int, calls: list[PreparedCall]) -> list[str]:
        """Execute the calls (in parallel) and return each call's tool-message content."""
        ...


class StepLimitReached(Exception):
    def __init__(self, steps: int) -> None:
        super().__init__(f"the model was still calling tools after {steps} rounds of tools.")
        self.steps = steps


@dataclass(frozen=True)
class TurnOutcome:
    steps: int
    last: StepResult


def prepare_call(call: ToolCall, offered: Sequence[Tool]) -> PreparedCall:
    """Validate one call against the tools this turn offered."""
    if is_builtin_web_search(call.name):
        return PreparedCall(call, result=builtin_web_search_result(call.arguments))
    names = [tool.name for tool in offered]
    tool = get_tool(call.name) if call.name in names else None
    if tool is None:
        return PreparedCall(call, error=unknown_tool_message(call.name, names))
    try:
        arguments = parse_arguments(tool, call.arguments)
    except ArgumentError as exc:
        return PreparedCall(call, tool=tool, error=str(exc))
    return PreparedCall(call, tool=tool, arguments=arguments)


def assistant_tool_message(
    reasoning: str, content: str, calls: Sequence[ToolCall]
) -> dict[str, Any]:
    """The assistant message that replays a tool-calling step, reasoning included."""
    return {
        "role": "assistant",
        "content": content,
        "reasoning_content": reasoning or NO_REASONING,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in calls
        ],
    }


def tool_message(call: ToolCall, content: str) -> dict[str, Any]:
    # The id is echoed byte for byte: Moonshot ("add:0") and vLLM ("functions.add:0") differ.
    return {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": content}


async def run_turn(
    client: ProviderClient,
    messages: list[dict[str, Any]],
    sink: TurnSink,
    *,
    tools: Sequence[Tool] = (),
    tool_config: ToolConfig | None = None,
    max_steps: int = 300,
) -> TurnOutcome:
    """Run one assistant turn until the model answers without calling tools.

    Raises `ProviderError` when the provider fails (the client retries only before output),
    `StepLimitReached` past `max_steps`, and `CancelledError` when the caller stops the turn;
    in every case the sink already holds everything that was produced.
    """
    specs = tool_specs(tools, tool_config) if tools else None
    history = list(messages)
    # `max_steps` rounds of tools, then the model must answer: a 300-round loop fits in 300.
    for index in range(max_steps + 1):
        await sink.step_started(index)
        reasoning: list[str] = []
        content: list[str] = []
        result: StepResult | None = None
        async for item in client.stream_step(history, tools=specs):
            if isinstance(item, StepResult):
                result = item
                continue
            if isinstance(item, ReasoningDelta):
                reasoning.append(item.text)
            elif isinstance(item, ContentDelta):
                content.append(item.text)
            await sink.on_event(item)
        assert result is not None, "stream_step always ends with a StepResult"
        await sink.step_finished(index, result)
        if not result.tool_calls:
            return TurnOutcome(steps=index + 1, last=result)
        if index == max_steps:
            break
        prepared = [prepare_call(call, tools) for call in result.tool_calls]
        contents = await sink.run_tool_calls(index, prepared)
        history.append(
            assistant_tool_message("".join(reasoning), "".join(content), result.tool_calls)
        )
        history.extend(
            tool_message(p.call, text) for p, text in zip(prepared, contents, strict=True)
        )
    raise StepLimitReached(max_steps)


def summarize_arguments(arguments: str, limit: int = 80) -> str:
    """A one-line summary of a call's arguments for its card."""
    try:
        parsed = json.loads(arguments) if arguments else {}
    except ValueError:
        return arguments[:limit]
    if isinstance(parsed, dict) and len(parsed) == 1:
        (value,) = parsed.values()
        text = value if isinstance(value, str) else json.dumps(value)
    else:
        text = json.dumps(parsed, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
