"""Kimi K2 Thinking's wire format: Moonshot's request rules and errors, the chunk templates and
the SSE event stream of one model step (see docs/kimi-protocol.md).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

CONTEXT_LIMIT = 262_144

# (HTTP status, error type, message) per !error name, as Moonshot documents them.
ERRORS: dict[str, tuple[int, str, str]] = {
    "invalid_request": (400, "invalid_request_error", "Invalid request: rejected on purpose"),
    "context_length": (
        400,
        "invalid_request_error",
        f"Invalid request: Your request exceeded model token limit: {CONTEXT_LIMIT}",
    ),
    "content_filter": (400, "content_filter", "The request was rejected because it was high risk"),
    "auth": (401, "invalid_authentication_error", "Invalid Authentication"),
    "permission": (403, "permission_denied_error", "Your account is suspended or out of balance"),
    "not_found": (404, "resource_not_found_error", "Not found the model or Permission denied"),
    "overloaded": (
        429,
        "engine_overloaded_error",
        "The engine is currently overloaded, please try again later",
    ),
    "rate_limit": (
        429,
        "rate_limit_reached_error",
        "Your account reached the rate limit, please try again after 1 seconds",
    ),
    "quota": (429, "exceeded_current_quota_error", "You exceeded your current token quota"),
    "server": (500, "server_error", "The server had an error while processing your request"),
    "timeout": (504, "timeout", "The request timed out"),
}

UNLIMITED = 1 << 40  # token budget when the request sets no max_tokens

# How the writer treats an event: send it with the next token, give it the next slot of the
# rate schedule, wait HANG_INTERVAL before it, or drop the connection instead.
PLAIN, PACED, SLOW, CUT = range(4)

_COMMENT = ": OPENROUTER PROCESSING\n\n"
_MALFORMED = "data: {not json\n\n"
_DONE = "data: [DONE]\n\n"


# --- requests -------------------------------------------------------------------------------


def message_text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a content array."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def message_chars(message: dict[str, Any]) -> int:
    chars = len(message_text(message.get("content")))
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str):
        chars += len(reasoning)
    if message.get("tool_calls"):
        chars += len(json.dumps(message["tool_calls"]))
    return chars


def check_request(body: dict[str, Any]) -> str | None:
    """Moonshot's request rules for a thinking model; returns the 400 message, if any."""
    messages = body.get("messages")
    if not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)):
        return "Invalid request: messages must be a non-empty array of objects"
    if body.get("thinking") is True:
        return "Invalid request: thinking cannot be set to true; this model always thinks"
    tool_choice = body.get("tool_choice")
    if tool_choice == "required" or isinstance(tool_choice, dict):
        return "Invalid request: tool_choice must be auto or none when thinking is enabled"
    tools = body.get("tools")
    if tools is not None:
        problem = _check_tools(tools)
        if problem:
            return problem
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and not (isinstance(limit, int) and limit > 0):
        return "Invalid request: max_tokens must be a positive integer"
    call_ids: set[str] = set()
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            return f"Invalid request: unknown role {role!r} in message at index {index}"
        if role == "assistant" and message.get("tool_calls"):
            reasoning = message.get("reasoning_content")
            if not (isinstance(reasoning, str) and reasoning):
                return (
                    "thinking is enabled but reasoning_content is missing in assistant tool call "
                    f"message at index {index}"
                )
            call_ids.update(
                call["id"]
                for call in message["tool_calls"]
                if isinstance(call, dict) and isinstance(call.get("id"), str)
            )
        if role == "tool" and message.get("tool_call_id") not in call_ids:
            return (
                f"Invalid request: tool_call_id {message.get('tool_call_id')!r} in message at "
                f"index {index} matches no tool call of an earlier assistant message"
            )
    return None


def _check_tools(tools: Any) -> str | None:
    if not isinstance(tools, list) or len(tools) > 128:
        return "Invalid request: tools must be an array of at most 128 tools"
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            return "Invalid request: every tool needs a function"
        name = function.get("name")
        if tool.get("type") == "builtin_function":
            continue
        if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,63}", name)):
            return f"Invalid request: invalid tool name {name!r}"
        parameters = function.get("parameters")
        if parameters is not None and not (
            isinstance(parameters, dict) and parameters.get("type") == "object"
        ):
            return f"Invalid request: parameters of tool {name!r} must be an object schema"
    return None


# --- responses ------------------------------------------------------------------------------


@dataclass
class Step:
    """One model step to produce: reasoning, then tool calls or an answer."""

    model: str
    reasoning_field: str
    reasoning: Iterator[str]
    content: Iterator[str]
    tool_calls: list[tuple[str, str, str]]  # (id, name, arguments)
    max_tokens: int | None
    prompt_tokens: int
    cached_tokens: int
    include_usage: bool
    rate: float
    think: int
    faults: set[str]
    malformed: bool
    comments: bool

    def usage(self, reasoning: int, content: int, tool_calls: bool) -> str:
        """Moonshot usage as JSON; tool-call arguments are billed as output too."""
        tools = sum(len(a) // 4 + 4 for _, _, a in self.tool_calls) if tool_calls else 0
        completion = reasoning + content + tools
        return json.dumps(
            {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion,
                "cached_tokens": self.cached_tokens,
                "completion_tokens_details": {"reasoning_tokens": reasoning},
            }
        )


def error_body(error_type: str, message: str) -> bytes:
    return json.dumps({"error": {"type": error_type, "message": message}}).encode()


class _Chunks:
    """String templates for one stream's chunks: per token only the text is JSON-encoded."""

    def __init__(self, model: str) -> None:
        head = (
            f'data: {{"id":"chatcmpl-{uuid.uuid4().hex[:24]}","object":"chat.completion.chunk",'
            f'"created":{int(time.time())},"model":{json.dumps(model)},"choices":'
        )
        self.head = head
        self.delta_prefix = head + '[{"index":0,"delta":{'
        self.delta_suffix = '},"logprobs":null,"finish_reason":null}]}\n\n'

    def delta(self, fields: str) -> str:
        return f"{self.delta_prefix}{fields}{self.delta_suffix}"

    def tool_delta(self, fragments: Iterable[dict[str, Any]]) -> str:
        return self.delta('"tool_calls":' + json.dumps(list(fragments)))

    def finish(self, reason: str, usage: str) -> str:
        choice = f'[{{"index":0,"delta":{{}},"finish_reason":"{reason}","usage":{usage}}}]'
        return f"{self.head}{choice}}}\n\n"

    def usage(self, usage: str) -> str:
        return f'{self.head}[],"usage":{usage}}}\n\n'


def _split_arguments(arguments: str) -> list[str]:
    """Arguments in three pieces, the way engines stream them."""
    third = max(1, -(-len(arguments) // 3))
    return [arguments[i : i + third] for i in range(0, len(arguments), third)] or [""]


def sse_events(step: Step) -> Iterator[tuple[str, int]]:
    """The stream as (SSE text, pacing) pairs; pacing says how the writer waits before it."""
    chunks = _Chunks(step.model)
    faults, comments = step.faults, step.comments
    if comments:
        yield _COMMENT, PLAIN
    yield chunks.delta('"role":"assistant","content":""'), PLAIN
    budget = UNLIMITED if step.max_tokens is None else step.max_tokens
    think_tags = step.reasoning_field == "think"
    key = '"content":' if think_tags else f'"{step.reasoning_field}":'
    prefix, suffix = chunks.delta_prefix + key, chunks.delta_suffix
    finish = "tool_calls" if step.tool_calls else "stop"
    reasoning = content = 0
    for token in step.reasoning:
        slow = "hang" in faults and reasoning >= step.think
        if reasoning >= budget and not slow:
            finish = "length"
            break
        if think_tags and reasoning == 0:
            # Split the tag across chunks: parsers must not assume a tag arrives whole.
            yield f"{prefix}{_json_str('<thi')}{suffix}", PACED
            token = "nk>" + token
        yield f"{prefix}{_json_str(token)}{suffix}", SLOW if slow else PACED
        reasoning += 1
        if comments and reasoning % 10 == 0:
            yield _COMMENT, PLAIN
    if think_tags and reasoning:
        yield f"{prefix}{_json_str('</th')}{suffix}", PACED
        yield f"{prefix}{_json_str('ink>')}{suffix}", PACED
    if finish == "tool_calls":
        yield from ((text, PACED) for text in _tool_call_deltas(chunks, step.tool_calls))
    elif finish == "stop":
        prefix = chunks.delta_prefix + '"content":'
        for token in step.content:
            if reasoning + content >= budget:
                finish = "length"
                break
            yield f"{prefix}{_json_str(token)}{suffix}", PACED
            content += 1
            if content == 1 and step.malformed:
                yield _MALFORMED, PLAIN
            if content == 3 and "error_midstream" in faults:
                break
            if content == 5 and "cut" in faults:
                break
            if comments and (reasoning + content) % 10 == 0:
                yield _COMMENT, PLAIN
    if step.malformed and content == 0:
        yield _MALFORMED, PLAIN
    if "error_midstream" in faults:
        message = "The engine failed while generating the response"
        yield f"data: {error_body('server_error', message).decode()}\n\n", PLAIN
        return
    if "cut" in faults:
        yield "", CUT
        return
    usage = step.usage(reasoning, content, finish == "tool_calls")
    yield chunks.finish(finish, usage), PLAIN
    if step.include_usage:
        yield chunks.usage(usage), PLAIN
    yield _DONE, PLAIN


def _tool_call_deltas(chunks: _Chunks, calls: list[tuple[str, str, str]]) -> Iterator[str]:
    """Each call's header, then one delta with every call's first piece, then the rest by index.

    Putting several calls in one delta, after all headers, is legal and catches clients that
    assemble calls by id or assume a new index means the previous call is complete.
    """
    pieces = [_split_arguments(arguments) for _, _, arguments in calls]
    for index, (call_id, name, _) in enumerate(calls):
        header = {"name": name, "arguments": ""}
        yield chunks.tool_delta(
            [{"index": index, "id": call_id, "type": "function", "function": header}]
        )
    yield chunks.tool_delta(
        {"index": index, "function": {"arguments": parts[0]}} for index, parts in enumerate(pieces)
    )
    for index, parts in enumerate(pieces):
        for part in parts[1:]:
            yield chunks.tool_delta([{"index": index, "function": {"arguments": part}}])
