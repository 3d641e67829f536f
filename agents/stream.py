"""Incremental parser for the chat-completions SSE stream that thinking models send.

Pure and synchronous: feed it lines (or already decoded chunks) as they arrive and it returns
the events each one produced. It accepts every shape listed in docs kimi-protocol.md:
reasoning in `reasoning_content`, in `reasoning`, or inline as `<think>…</think>` in the
content; tool calls accumulated by index; usage in the choice or in a trailing chunk.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from agents.errors import classify_stream_error

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
# vLLM / SGLang's kimi_k2 parsers sometimes let the raw tool-call markup through.
_LEAKED_MARKERS = re.compile(
    r"<\|tool_calls?_(?:section_begin|section_end|begin|end|argument_begin)\|>"
)


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of the model's thinking."""

    text: str


@dataclass(frozen=True, slots=True)
class ContentDelta:
    """A piece of the answer."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of tool call `index`; `id` and `name` only on the fragment that first has them."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class MalformedLine:
    """A `data:` line that is not a JSON object: reported, skipped, and the stream goes on."""

    line: str
    reason: str


StreamEvent = ReasoningDelta | ContentDelta | ToolCallDelta | MalformedLine


@dataclass(slots=True)
class Usage:
    """Token counts of one step, as the provider reported them."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Usage:
        """Read a `usage` object; cache hits and reasoning tokens live in different places."""
        prompt = _count(d.get("prompt_tokens"))
        completion = _count(d.get("completion_tokens"))
        # Moonshot reports cache hits at the top level, OpenAI-style servers in the details.
        cached = max(
            _count(d.get("cached_tokens")),
            _count(_mapping(d.get("prompt_tokens_details")).get("cached_tokens")),
        )
        reasoning = _count(_mapping(d.get("completion_tokens_details")).get("reasoning_tokens"))
        total = _count(d.get("total_tokens")) or prompt + completion
        return cls(
            prompt_tokens=prompt,
            cached_tokens=cached,
            completion_tokens=completion,
            reasoning_tokens=reasoning,
            total_tokens=total,
        )


@dataclass(slots=True)
class ToolCall:
    """A complete tool call; `arguments` is the raw accumulated string (maybe invalid JSON).

    `id` is echoed back to the provider byte for byte. When a provider sent none, it is
    `"<name>:<index>"`, Moonshot's own format, so the turn loop always has one to echo.
    """

    index: int
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class _PartialCall:
    index: int
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class _Phase(Enum):
    OPENING = "opening"  # no visible content yet: a `<think>` here opens inline reasoning
    THINKING = "thinking"  # inside `<think>…`
    AFTER_THINK = "after_think"  # just after `</think>`: drop the whitespace that follows
    ANSWER = "answer"  # plain content from here on


class StreamParser:
    """Turns one step's SSE stream into `StreamEvent`s and remembers how the step ended."""

    def __init__(self) -> None:
        self.done = False
        self.finish_reason: str | None = None
        self._usage: Usage | None = None
        self._calls: dict[int, _PartialCall] = {}
        self._last_call_index: int | None = None
        self._phase = _Phase.OPENING
        # Content not yet emitted: leading whitespace, or a possible split think tag.
        self._pending = ""

    @property
    def usage(self) -> Usage | None:
        """The last usage reported; providers may repeat it, so it is never summed."""
        return self._usage

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The tool calls accumulated so far, by index."""
        return [
            ToolCall(
                index=call.index,
                id=call.id or f"{call.name}:{call.index}",
                name=call.name,
                arguments="".join(call.arguments),
            )
            for call in sorted(self._calls.values(), key=lambda call: call.index)
        ]

    def feed_line(self, line: str) -> list[StreamEvent]:
        """Parse one SSE line (without its newline).

        Raises `ProviderError` when the line carries an error object.
        """
        line = line.rstrip("\r\n")
        if not line or line.startswith(":"):
            return []
        name, _, value = line.partition(":")
        if name != "data":
            # event:, id:, retry: carry nothing the chat-completions protocol uses.
            return []
        value = value.removeprefix(" ")
        if not value.strip():
            return []
        if value.strip() == "[DONE]":
            self.done = True
            return []
        try:
            chunk = json.loads(value)
        except ValueError as exc:
            return [MalformedLine(line=line, reason=f"invalid JSON: {exc}")]
        if not isinstance(chunk, dict):
            return [MalformedLine(line=line, reason="not a JSON object")]
        return self.feed_chunk(chunk)

    def feed_chunk(self, chunk: Mapping[str, Any]) -> list[StreamEvent]:
        """Parse one decoded `chat.completion.chunk` object.

        Raises `ProviderError` when the object has a top-level `error`: a failure reported
        inside a 200 stream.
        """
        if chunk.get("error"):
            raise classify_stream_error(chunk)
        events: list[StreamEvent] = []
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            # We always ask for one choice; anything else is not ours to show.
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, Mapping):
                events.extend(self._feed_delta(delta))
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
            # Moonshot puts usage inside the choice of the last chunk.
            if isinstance(choice.get("usage"), Mapping):
                self._usage = Usage.from_dict(choice["usage"])
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = Usage.from_dict(chunk["usage"])
        return events

    def finish(self) -> list[StreamEvent]:
        """End of stream: release text held back while checking for a split think tag."""
        pending, self._pending = self._pending, ""
        if self._phase is _Phase.THINKING and pending:
            return [ReasoningDelta(pending)]
        if self._phase is _Phase.OPENING and pending.strip():
            # A lone "<thi" that never became a tag is plain content after all.
            self._phase = _Phase.ANSWER
            return [ContentDelta(pending)]
        return []

    def _feed_delta(self, delta: Mapping[str, Any]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        # Some vLLM versions send the same text under both names: take only one.
        for key in ("reasoning_content", "reasoning"):
            reasoning = delta.get(key)
            if isinstance(reasoning, str) and reasoning:
                reasoning = _LEAKED_MARKERS.sub("", reasoning)
                if reasoning:
                    events.append(ReasoningDelta(reasoning))
                break
        content = delta.get("content")
        if isinstance(content, str) and content:
            events.extend(self._feed_content(_LEAKED_MARKERS.sub("", content)))
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list):
            events.extend(self._feed_tool_calls(tool_calls))
        return events

    def _feed_content(self, text: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        pending = self._pending + text
        # One chunk can hold a whole "<think>…</think>answer": loop through the phases.
        while pending:
            if self._phase is _Phase.OPENING:
                stripped = pending.lstrip()
                if stripped.startswith(_THINK_OPEN):
                    pending = stripped[len(_THINK_OPEN) :]
                    self._phase = _Phase.THINKING
                elif not stripped or _THINK_OPEN.startswith(stripped):
                    break  # only whitespace or a tag prefix so far: wait for more
                else:
                    self._phase = _Phase.ANSWER
            elif self._phase is _Phase.THINKING:
                end = pending.find(_THINK_CLOSE)
                if end >= 0:
                    if end:
                        events.append(ReasoningDelta(pending[:end]))
                    pending = pending[end + len(_THINK_CLOSE) :]
                    self._phase = _Phase.AFTER_THINK
                    continue
                keep = _tag_prefix_length(pending, _THINK_CLOSE)
                if len(pending) > keep:
                    events.append(ReasoningDelta(pending[: len(pending) - keep]))
                pending = pending[len(pending) - keep :]
                break
            elif self._phase is _Phase.AFTER_THINK:
                pending = pending.lstrip()
                if pending:
                    self._phase = _Phase.ANSWER
            else:
                events.append(ContentDelta(pending))
                pending = ""
        self._pending = pending
        return events

    def _feed_tool_calls(self, fragments: list[Any]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        for fragment in fragments:
            if not isinstance(fragment, Mapping):
                continue
            function = _mapping(fragment.get("function"))
            call_id = _text(fragment.get("id"))
            name = _text(function.get("name"))
            arguments = function.get("arguments")
            if isinstance(arguments, Mapping):
                # A few servers send the arguments already decoded.
                arguments = json.dumps(arguments)
            elif not isinstance(arguments, str):
                arguments = ""
            index = self._call_index(fragment.get("index"), call_id)
            call = self._calls.setdefault(index, _PartialCall(index=index))
            new_id = call_id if call_id and not call.id else None
            new_name = name if name and not call.name else None
            call.id = call.id or call_id
            call.name = call.name or name
            call.arguments.append(arguments)
            self._last_call_index = index
            if new_id or new_name or arguments:
                events.append(ToolCallDelta(index, new_id, new_name, arguments))
        return events

    def _call_index(self, raw: object, call_id: str) -> int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        # No index (a few vendors omit it when there is one call): a new id starts the next
        # call, a fragment without an id continues the latest one.
        if call_id:
            for call in self._calls.values():
                if call.id == call_id:
                    return call.index
            return max(self._calls, default=-1) + 1
        return self._last_call_index if self._last_call_index is not None else 0


def _tag_prefix_length(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
