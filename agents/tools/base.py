"""What every tool shares: the Tool record, its context and configuration, argument checking.

A tool is data plus one function: a name and JSON Schema that the provider sees, and
``run(arguments, context) -> str`` that produces the text handed back to the model. The turn
loop never trusts the model's arguments: `parse_arguments` validates them against the schema
and, when they are wrong, raises `ArgumentError` whose message is written for the model to read
and correct itself (self-hosted engines in particular get arguments wrong more often).

Kimi's rules for function tools (at most 128, names ``[A-Za-z_][A-Za-z0-9_-]{0,63}``, an object
at the root of ``parameters``) are checked when a `Tool` is created, so a bad tool fails at
import rather than as an HTTP 400 in the middle of a conversation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, relevance

from agents.sandbox import SandboxLimits

MAX_TOOLS = 128
TOOL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
# The name Moonshot gives its server-side search; not a valid function name, on purpose.
BUILTIN_WEB_SEARCH = "$web_search"

_RETRY_HINT = "Send a JSON object matching the schema."
# Enough for the model to fix its call; more lines only repeat the same mistake.
_MAX_ERROR_LINES = 5
# jsonschema quotes the offending value, which can be a 100,000-character string: abbreviate
# it, and cap the whole line in case a message quotes it in some other way.
_MAX_VALUE_CHARS = 60
_MAX_ERROR_LINE_CHARS = 300


@dataclass(frozen=True)
class RecallHit:
    """One passage of past reasoning found by the recall tool, with where it came from."""

    conversation_id: str
    message_id: str
    step_index: int
    title: str
    snippet: str
    created_at: str


@dataclass(frozen=True)
class ToolContext:
    """Who a tool call runs for; the Django side fills in what it can offer.

    `recall(query, limit)` searches past reasoning the user may see; `should_stop()` is true
    once the turn was stopped, for tools that can give up early.
    """

    user_id: int | None = None
    conversation_id: str = ""
    recall: Callable[[str, int], list[RecallHit]] | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass(frozen=True)
class ToolConfig:
    """Deployment configuration for the tools, set once at start-up with `configure`.

    `fetch_allow_endpoints` lists exact ``(address, port)`` pairs fetch_url may reach even
    though they are not public (an internal service an operator deliberately trusts, or a test
    server); it comes from the operator, never from a model or a user.
    """

    searxng_url: str = ""
    provider: str = ""
    python_limits: SandboxLimits = SandboxLimits()
    fetch_max_bytes: int = 2_000_000
    max_result_chars: int = 20_000
    fetch_allow_endpoints: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        # Bad settings fail at start-up, not on the first tool call.
        if self.searxng_url and urlsplit(self.searxng_url).scheme not in ("http", "https"):
            raise ValueError(f"searxng_url must be an http(s) URL, got {self.searxng_url!r}")
        if self.fetch_max_bytes <= 0:
            raise ValueError(f"fetch_max_bytes must be positive, got {self.fetch_max_bytes}")
        if self.max_result_chars <= 0:
            raise ValueError(f"max_result_chars must be positive, got {self.max_result_chars}")


_config = ToolConfig()


def current_config() -> ToolConfig:
    """The configuration tools run with (defaults until `configure` is called)."""
    return _config


def set_config(config: ToolConfig) -> None:
    """Replace the configuration; use `agents.tools.configure`, which also rebuilds tools."""
    global _config
    _config = config


class ArgumentError(Exception):
    """The model's arguments were unusable; ``str(exc)`` is the message to send back to it."""


class ToolFailure(Exception):
    """A tool failed cleanly; ``str(exc)`` is the message to send back to the model."""


def _always_available(config: ToolConfig) -> str | None:
    return None


def _no_builtin(config: ToolConfig) -> str | None:
    return None


# eq=False: tools compare and hash by identity (the schema is a dict, so a field-wise hash of a
# frozen dataclass would fail), which is what sets and dict keys of tools need.
@dataclass(frozen=True, eq=False)
class Tool:
    """A tool the model may call.

    `parameters` is a strict JSON Schema (an object with ``properties``, ``required`` and
    ``additionalProperties: false``). `run` returns the text given to the model, uncut (the
    caller applies `truncate_result`), and raises `ToolFailure` for a failure the model should
    hear about. `time_limit` bounds a run in seconds; `unavailable(config)` gives the reason
    this deployment cannot offer the tool, or None; `builtin(config)` names a provider-side
    builtin that stands in for the tool under that configuration, or None.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    run: Callable[[dict[str, Any], ToolContext], str]
    time_limit: float = 30.0
    needs_network: bool = False
    default_enabled: bool = True
    unavailable: Callable[[ToolConfig], str | None] = field(default=_always_available)
    builtin: Callable[[ToolConfig], str | None] = field(default=_no_builtin)

    def __post_init__(self) -> None:
        if not TOOL_NAME_RE.match(self.name):
            raise ValueError(
                f"tool name {self.name!r} breaks the provider rule "
                "(a letter or underscore, then letters, digits, _ or -, at most 64 characters)"
            )
        if not self.description.strip():
            raise ValueError(f"tool {self.name!r} needs a description")
        _check_strict_schema(self.name, self.parameters)
        if self.time_limit <= 0:
            raise ValueError(f"tool {self.name!r}: time_limit must be positive")

    def spec(self, config: ToolConfig | None = None) -> dict[str, Any]:
        """The entry for the request's ``tools`` list under `config` (default: current)."""
        builtin = self.builtin(config or current_config())
        if builtin is not None:
            return {"type": "builtin_function", "function": {"name": builtin}}
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                # A copy, so a caller editing the request cannot change the tool's schema.
                "parameters": deepcopy(dict(self.parameters)),
            },
        }


def _check_strict_schema(name: str, schema: Mapping[str, Any]) -> None:
    Draft202012Validator.check_schema(schema)
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), Mapping):
        raise ValueError(f"tool {name!r}: parameters must be an object schema with properties")
    if schema.get("additionalProperties") is not False:
        raise ValueError(f"tool {name!r}: parameters must set additionalProperties to false")
    missing = set(schema.get("required", ())) - set(schema["properties"])
    if missing:
        raise ValueError(f"tool {name!r}: required names unknown properties {sorted(missing)}")


def parse_arguments(tool: Tool, raw: str) -> dict[str, Any]:
    """The model's JSON arguments for `tool`, validated against its schema.

    An empty string means ``{}`` (some vendors send it for tools without arguments). Raises
    `ArgumentError` naming every problem (invalid JSON with its position, a root that is not
    an object, each schema violation with its JSON path), in words the model can act on.
    """
    arguments = _decode(raw)
    if not isinstance(arguments, dict):
        raise ArgumentError(
            f"Arguments must be a JSON object, not {_json_type(arguments)}. {_RETRY_HINT}"
        )
    errors = sorted(
        Draft202012Validator(tool.parameters).iter_errors(arguments), key=relevance, reverse=True
    )
    if not errors:
        return arguments
    lines = [_clip(f"- {error.json_path}: {_short_message(error)}") for error in errors]
    if len(lines) > _MAX_ERROR_LINES:
        extra = len(lines) - _MAX_ERROR_LINES
        lines = [*lines[:_MAX_ERROR_LINES], f"- … and {extra} more"]
    listed = "\n".join(lines)
    raise ArgumentError(
        f"Arguments for {tool.name} do not match its schema:\n{listed}\n{_RETRY_HINT}"
    )


def _short_message(error: ValidationError) -> str:
    """The error's message with the offending value abbreviated, keeping the complaint."""
    shown = repr(error.instance)
    if len(shown) <= _MAX_VALUE_CHARS or shown not in error.message:
        return error.message
    return error.message.replace(shown, shown[:_MAX_VALUE_CHARS] + "…")


def _decode(raw: str) -> object:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        where = f"at line {exc.lineno} column {exc.colno} (char {exc.pos})"
        raise ArgumentError(
            f"Arguments are not valid JSON: {exc.msg} {where}. {_RETRY_HINT}"
        ) from None
    except _NotJSON as exc:
        raise ArgumentError(f"Arguments are not valid JSON: {exc}. {_RETRY_HINT}") from None
    except RecursionError:
        raise ArgumentError(f"Arguments are nested too deeply. {_RETRY_HINT}") from None


class _NotJSON(ValueError):
    pass


def _reject_constant(name: str) -> object:
    # Python's json accepts NaN and Infinity; JSON does not, and neither do our schemas.
    raise _NotJSON(f"{name} is not a JSON value")


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def _clip(line: str) -> str:
    if len(line) <= _MAX_ERROR_LINE_CHARS:
        return line
    return line[: _MAX_ERROR_LINE_CHARS - 1] + "…"


def unknown_tool_message(name: str, offered: Iterable[str]) -> str:
    """What to tell a model that called a tool it was not offered."""
    names = ", ".join(offered)
    shown = _clip(repr(name))
    if not names:
        return f"Unknown tool {shown}. No tools are available."
    return f"Unknown tool {shown}. Available tools: {names}."


def truncate_result(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to at most `limit` characters, and whether it was cut.

    Keeps the head and the tail (a page's start, a traceback's end) around a marker saying how
    much is missing, so the model knows the result is partial.
    """
    if len(text) <= limit:
        return text, False
    # The marker's length depends on the count; size it for the largest count possible.
    room = limit - len(_marker(len(text)))
    if room < 2:
        return text[:limit], True
    head = room - room // 2
    tail = room // 2
    return text[:head] + _marker(len(text) - room) + text[len(text) - tail :], True


def _marker(omitted: int) -> str:
    return f"\n[… {omitted} characters omitted …]\n"


def is_builtin_web_search(name: str) -> bool:
    """Whether a tool call names Moonshot's server-side web search."""
    return name == BUILTIN_WEB_SEARCH
