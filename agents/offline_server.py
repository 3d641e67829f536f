"""Offline model server: a real HTTP server that speaks Kimi K2 Thinking's streaming protocol.

Glassbox runs, is tested and is benchmarked against this server when no provider key is set, so
the whole client stack (the openai SDK over httpx, our stream parser, the turn loop) meets the same
wire format as Moonshot's API (see docs/kimi-protocol.md). It is plain asyncio streams with just
enough HTTP/1.1: keep-alive, Content-Length and chunked request bodies, and SSE responses sent with
``Transfer-Encoding: chunked`` so a connection survives a finished stream and a truncated stream is
visible to the client as an incomplete body.

Endpoints: ``POST /v1/chat/completions`` (``stream`` true: SSE; false: one ``chat.completion``),
``GET /v1/models``, ``GET /health``. Any model name and any bearer key are accepted.

Output is deterministic and refers to the question (the last user message). Tokens written
``!name`` or ``!name:value`` in that message script the behaviour and are stripped from the
quoted question:

==========================  =====================================================================
``!think:N``                reasoning length in tokens (default 60)
``!words:N``                answer length in tokens (default 120); long answers are many Markdown
                            blocks separated by blank lines
``!rate:N``                 tokens per second for this request (0: as fast as possible)
``!field:reasoning``        reasoning in ``delta.reasoning`` (vLLM, OpenRouter), not in
                            ``delta.reasoning_content``
``!field:think``            reasoning inline as ``<think>…</think>`` in ``content``, the tags
                            split across chunks
``!echo:TEXT``              the answer is exactly TEXT (the rest of the line)
``!error:NAME``             fail with the HTTP status and error body of ``ERRORS[NAME]``
``!fail_times:N``           apply ``!error``/``!error_midstream``/``!cut``/``!hang`` only to the
                            first N requests with this exact last user message (retries succeed)
``!error_midstream``        after some reasoning and content, a ``data:`` line with a top-level
                            ``error`` object, then the stream ends without ``[DONE]``
``!cut``                    close the connection after some content (no finish, no ``[DONE]``)
``!malformed``              one ``data: {not json`` line mid-stream; the stream goes on
``!comments``               ``: OPENROUTER PROCESSING`` comment lines
``!hang``                   reason slowly forever, until the client disconnects
``!tool:NAME:{json}``       call tool NAME with these arguments (repeat for parallel calls)
``!ids:vllm``               tool-call ids ``functions.NAME:N`` instead of Moonshot's ``NAME:N``
``!badjson``                the (first) tool call's arguments are not valid JSON
``!unknown_tool``           also call a tool named ``does_not_exist``
``!loop:N``                 call tools (the ``!tool`` specs, else the first declared tool) every
                            step until the request holds N tool results, then answer
==========================  =====================================================================

``max_tokens`` (or ``max_completion_tokens``) caps reasoning + answer and ends the step with
``finish_reason: "length"``; without it there is no cap.

Like Moonshot, the server rejects with 400 ``invalid_request_error``: an assistant message with
``tool_calls`` but no ``reasoning_content``, a tool message whose ``tool_call_id`` matches no
earlier call byte for byte, ``tool_choice`` "required" or a named function, ``"thinking": true``,
and prompt + ``max_tokens`` beyond the 262,144-token context.

Run it with ``python -m agents.offline_server --host 127.0.0.1 --port 8765 --rate 40``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "kimi-k2-thinking"
CONTEXT_LIMIT = 262_144
DEFAULT_THINK = 60
DEFAULT_WORDS = 120
# Reasoning pace once a !hang stream has used up its normal reasoning: slow but never silent.
HANG_INTERVAL = 0.5

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

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024
# Above this many unsent bytes a stream waits for the socket (back-pressure); below it, draining
# on every token would only add an await per write.
_HIGH_WATER = 64 * 1024
_REQUEST_LOG_LIMIT = 10_000
_UNLIMITED = 1 << 40  # token budget when the request sets no max_tokens
# A stream that is behind schedule (or unpaced) still yields to the loop this often.
_YIELD_EVERY = 64

# How the writer treats an event: send it with the next token, give it the next slot of the
# rate schedule, wait HANG_INTERVAL before it, or drop the connection instead.
_PLAIN, _PACED, _SLOW, _CUT = range(4)

_TOKEN_RE = re.compile(r"\s*\S+\s*")
_DIRECTIVE_RE = re.compile(r"(?<!\S)!([a-z_]+)")
_VALUE_RE = re.compile(r"\S*")
_TOOL_NAME_RE = re.compile(r"\$?[A-Za-z_][A-Za-z0-9_-]{0,63}")
_DIRECTIVE_NAMES = frozenset(
    {
        *("think", "words", "rate", "field", "echo", "error", "fail_times", "error_midstream"),
        *("cut", "malformed", "comments", "hang", "tool", "ids", "badjson", "unknown_tool", "loop"),
    }
)
_FAULTS = ("error_midstream", "cut", "hang")
_BAD_ARGUMENTS = '{"query": "unterminated'
_COMMENT = ": OPENROUTER PROCESSING\n\n"
_MALFORMED = "data: {not json\n\n"
_DONE = "data: [DONE]\n\n"


def split_tokens(text: str) -> list[str]:
    """Split text into word pieces (a word and the whitespace after it); they join back to it."""
    return _TOKEN_RE.findall(text)


# --- directives -------------------------------------------------------------------------------


@dataclass
class Directives:
    """What the last user message asks of the server; `question` is its text without them."""

    question: str = ""
    think: int = DEFAULT_THINK
    words: int = DEFAULT_WORDS
    rate: float | None = None
    reasoning_field: str = "reasoning_content"
    echo: str | None = None
    error: str | None = None
    fail_times: int | None = None
    faults: set[str] = field(default_factory=set)
    malformed: bool = False
    comments: bool = False
    tools: list[tuple[str, str]] = field(default_factory=list)
    vllm_ids: bool = False
    badjson: bool = False
    unknown_tool: bool = False
    loop: int | None = None


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def parse_directives(text: str) -> Directives:
    """Read the `!` directives out of a user message (unknown `!words` stay in the question)."""
    d = Directives()
    kept: list[str] = []
    pos = 0
    while match := _DIRECTIVE_RE.search(text, pos):
        name, end = match.group(1), match.end()
        if name not in _DIRECTIVE_NAMES:
            kept.append(text[pos:end])
            pos = end
            continue
        kept.append(text[pos : match.start()])
        if name == "echo":
            line_end = text.find("\n", end)
            line_end = len(text) if line_end < 0 else line_end
            d.echo = text[end + 1 : line_end] if text.startswith(":", end) else ""
            end = line_end
        elif name == "tool":
            end = _parse_tool(text, end, d)
        else:
            value = None
            if text.startswith(":", end):
                value_match = _VALUE_RE.match(text, end + 1)
                assert value_match is not None  # \S* always matches
                value, end = value_match.group(), value_match.end()
            _apply(d, name, value)
        pos = end
    kept.append(text[pos:])
    d.question = " ".join("".join(kept).split())
    return d


def _parse_tool(text: str, end: int, d: Directives) -> int:
    """Parse `:name` and optional `:{json}` after `!tool`; JSON may contain spaces."""
    name_match = _TOOL_NAME_RE.match(text, end + 1) if text.startswith(":", end) else None
    if name_match is None:
        return end
    name, end, arguments = name_match.group(), name_match.end(), "{}"
    if text.startswith(":", end):
        try:
            value, end = json.JSONDecoder().raw_decode(text, end + 1)
            arguments = json.dumps(value, ensure_ascii=False)
        except ValueError:
            # Not JSON: pass the raw text through, which is what a confused model would do.
            raw = _VALUE_RE.match(text, end + 1)
            assert raw is not None
            arguments, end = raw.group(), raw.end()
    d.tools.append((name, arguments))
    return end


def _apply(d: Directives, name: str, value: str | None) -> None:
    if name in ("think", "words", "loop", "fail_times"):
        number = _int(value)
        if number is not None:
            setattr(d, name, min(number, 10_000_000))
    elif name == "rate":
        with contextlib.suppress(ValueError):
            d.rate = max(0.0, float(value or ""))
    elif name == "field" and value in ("reasoning", "think", "reasoning_content"):
        d.reasoning_field = str(value)
    elif name == "error":
        d.error = value or "server"
    elif name == "ids":
        d.vllm_ids = value == "vllm"
    elif name in _FAULTS:
        d.faults.add(name)
    elif name in ("malformed", "comments", "badjson", "unknown_tool"):
        setattr(d, name, True)


# --- deterministic text ---------------------------------------------------------------------

_REASONING = (
    "First I should pin down what is actually being asked.",
    "The key terms are clear enough, so I can focus on the substance.",
    "A good answer starts with the main idea and then gives an example.",
    "I could mention a common pitfall, since people often trip over it.",
    "A short code sample would make this concrete.",
    "A bullet list will make the steps easy to scan.",
    "I should keep the tone plain and avoid jargon where I can.",
    "Edge cases matter: empty input, very long input and unusual characters.",
    "Let me double-check the reasoning before writing the answer.",
    "That seems consistent, so I can draft the reply now.",
)
_PROSE = (
    "Streaming text one token at a time shows how the interface copes with partial Markdown.",
    "Blocks are separated by blank lines, so a renderer can finish one before the next begins.",
    "Deterministic output keeps tests stable: the same question always gets the same answer.",
    "Long answers exercise scrolling, coalescing of deltas and the cost of re-rendering.",
    "A careful client never shows the same text twice, not even after a reconnect.",
    "Inline `code`, **bold** and _emphasis_ appear here so the renderer has something to style.",
    "Links such as [the CommonMark help](https://commonmark.org/help/) keep a safe href.",
    "Numbers like 3.14159 and 2**10 = 1024 must survive escaping unchanged.",
)
_POINTS = (
    "Start from the simplest case that works.",
    "Measure before optimising anything.",
    "Keep the data in one place and derive the rest.",
    "Write the test that would have caught the bug.",
    "Prefer boring, well-understood tools.",
    "Make failures loud and recoverable.",
    "Name things after what they do.",
)
_CODE = (
    (
        "python",
        'def answer(question: str) -> str:\n    """Reply number {n}."""\n'
        "    return question.strip()",
    ),
    (
        "javascript",
        "function answer(question) {{\n  // reply number {n}\n  return question.trim();\n}}",
    ),
    ("bash", 'for i in 1 2 3; do\n  echo "reply {n}, line $i"\ndone'),
    ("json", '{{"reply": {n}, "tokens": ["one", "two", "three"], "done": true}}'),
)


def _reasoning_tokens(intro: str) -> Iterator[str]:
    """Endless reasoning: the intro, then the stock sentences round and round."""
    yield from split_tokens(intro + " ")
    for sentence in itertools.cycle(_REASONING):
        yield from split_tokens(sentence + " ")


def _bullets(start: int, ordered: bool = False) -> str:
    items = [_POINTS[(start + k) % len(_POINTS)] for k in range(3)]
    return "\n".join(f"{k + 1}. {item}" if ordered else f"- {item}" for k, item in enumerate(items))


def _code(n: int) -> str:
    language, template = _CODE[n % len(_CODE)]
    return f"```{language}\n{template.format(n=n)}\n```"


def _blocks(question: str, topic: str) -> Iterator[str]:
    """Endless Markdown blocks: an introduction about the question, then varied filler."""
    yield f"## {topic}"
    yield (
        f"You asked: “{question[:80]}”. Here is a deterministic answer from the Glassbox offline "
        "model server; it streams one word piece at a time so the app can run without a key."
    )
    yield _bullets(0)
    yield _code(0)
    for n in itertools.count(1):
        kind = n % 7
        if kind == 0:
            yield f"### Part {n}: {topic}"
        elif kind == 1:
            yield " ".join(_PROSE[(n + k) % len(_PROSE)] for k in range(3))
        elif kind == 2:
            yield _bullets(n)
        elif kind == 3:
            yield _code(n)
        elif kind == 4:
            yield f"> {_PROSE[n % len(_PROSE)]}"
        elif kind == 5:
            yield _bullets(n, ordered=True)
        else:
            yield (
                f"| Step | Action |\n| --- | --- |\n| {n}.1 | {_POINTS[n % len(_POINTS)]} |\n"
                f"| {n}.2 | {_POINTS[(n + 1) % len(_POINTS)]} |"
            )


def _answer_tokens(question: str, topic: str, words: int, lead: str) -> Iterator[str]:
    """Exactly `words` tokens of Markdown (plus the `lead` paragraph, always whole).

    Whole blocks are emitted while they fit; the remainder is one plain paragraph, so the answer
    never ends inside a code fence whatever the length.
    """
    if lead:
        yield from split_tokens(lead + ("\n\n" if words else ""))
    remaining = words
    for block in _blocks(question, topic):
        if remaining <= 0:
            return
        tokens = split_tokens(block)
        if len(tokens) > remaining:
            sentence = f"In short, {topic} comes down to a few careful steps".split()
            filler = " ".join(itertools.islice(itertools.cycle(sentence), remaining))
            yield from split_tokens(filler.rstrip(".?!:;,") + ".")
            return
        remaining -= len(tokens)
        if remaining:
            tokens[-1] += "\n\n"
        yield from tokens


# --- requests -------------------------------------------------------------------------------


def _text(content: Any) -> str:
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


def _message_chars(message: dict[str, Any]) -> int:
    chars = len(_text(message.get("content")))
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str):
        chars += len(reasoning)
    if message.get("tool_calls"):
        chars += len(json.dumps(message["tool_calls"]))
    return chars


def _check_request(body: dict[str, Any]) -> str | None:
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


def _example_arguments(tool: dict[str, Any]) -> str:
    """Plausible arguments for a declared tool: a value of the right type per required field."""
    parameters = tool.get("function", {}).get("parameters") or {}
    properties = parameters.get("properties") or {}
    samples: dict[str, Any] = {"integer": 1, "number": 1.5, "boolean": True, "array": []}
    arguments = {
        name: samples.get(str((properties.get(name) or {}).get("type")), "glassbox")
        for name in parameters.get("required", list(properties))
    }
    return json.dumps(arguments)


@dataclass
class _Step:
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


def _plan_calls(
    d: Directives, body: dict[str, Any], tail: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    """The (name, arguments) calls this step makes, given the turn so far (`tail`)."""
    results = sum(1 for m in tail if m.get("role") == "tool")
    called = any(m.get("role") == "assistant" and m.get("tool_calls") for m in tail)
    if (d.loop is not None and results >= d.loop) or (d.loop is None and called):
        return []
    declared = [
        t
        for t in body.get("tools") or []
        if isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
    ]
    calls = list(d.tools)
    if d.loop is not None and not calls and declared:
        calls = [(declared[0]["function"]["name"], _example_arguments(declared[0]))]
    if d.badjson:
        name = calls[0][0] if calls else (declared[0]["function"]["name"] if declared else "lookup")
        calls[:1] = [(name, _BAD_ARGUMENTS)]
    if d.unknown_tool:
        calls.append(("does_not_exist", "{}"))
    return calls


# --- HTTP -----------------------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _Connection:
    """A client connection: its own read buffer, so bytes read while watching are kept."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.streaming = False
        self.disconnected = False

    async def fill(self) -> bool:
        """Read more bytes; False at end of stream (the client closed or reset)."""
        try:
            data = await self.reader.read(65536)
        except ConnectionError:
            data = b""
        self.buffer += data
        return bool(data)

    async def read_line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > _MAX_HEAD:
                raise _BadRequest(431, "line too long")
            if not await self.fill():
                raise ConnectionResetError("client closed mid-request")
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self.fill():
                raise ConnectionResetError("client closed mid-request")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_request(self) -> _Request | None:
        """The next request, or None when the client closed the connection between requests."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0 or self.buffer.startswith(b"\r\n"):
            if self.buffer.startswith(b"\r\n"):  # stray CRLFs between requests are allowed
                del self.buffer[:2]
                continue
            if len(self.buffer) > _MAX_HEAD:
                raise _BadRequest(431, "request head too large")
            if not await self.fill():
                if self.buffer:
                    raise ConnectionResetError("client closed mid-request")
                return None
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise _BadRequest(400, "malformed header line")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = (
            "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        )
        if headers.get("expect", "").lower() == "100-continue":
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked()
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise _BadRequest(400, "bad Content-Length") from None
            if not 0 <= length <= _MAX_BODY:
                raise _BadRequest(413, "request body too large")
            body = await self.read_exactly(length)
        return _Request(method, target.split("?", 1)[0], headers, body, keep_alive)

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            try:
                size = int((await self.read_line()).split(b";", 1)[0], 16)
            except ValueError:
                raise _BadRequest(400, "bad chunk size") from None
            if size == 0:
                while await self.read_line():  # trailers, up to the empty line
                    pass
                return bytes(body)
            body += await self.read_exactly(size)
            await self.read_line()
            if len(body) > _MAX_BODY:
                raise _BadRequest(413, "request body too large")


def _error_body(error_type: str, message: str) -> bytes:
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


def _sse_events(step: _Step) -> Iterator[tuple[str, int]]:
    """The stream as (SSE text, pacing) pairs; pacing says how the writer waits before it."""
    chunks = _Chunks(step.model)
    faults, comments = step.faults, step.comments
    if comments:
        yield _COMMENT, _PLAIN
    yield chunks.delta('"role":"assistant","content":""'), _PLAIN
    budget = _UNLIMITED if step.max_tokens is None else step.max_tokens
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
            yield f"{prefix}{_json_str('<thi')}{suffix}", _PACED
            token = "nk>" + token
        yield f"{prefix}{_json_str(token)}{suffix}", _SLOW if slow else _PACED
        reasoning += 1
        if comments and reasoning % 10 == 0:
            yield _COMMENT, _PLAIN
    if think_tags and reasoning:
        yield f"{prefix}{_json_str('</th')}{suffix}", _PACED
        yield f"{prefix}{_json_str('ink>')}{suffix}", _PACED
    if finish == "tool_calls":
        yield from ((text, _PACED) for text in _tool_call_deltas(chunks, step.tool_calls))
    elif finish == "stop":
        prefix = chunks.delta_prefix + '"content":'
        for token in step.content:
            if reasoning + content >= budget:
                finish = "length"
                break
            yield f"{prefix}{_json_str(token)}{suffix}", _PACED
            content += 1
            if content == 1 and step.malformed:
                yield _MALFORMED, _PLAIN
            if content == 3 and "error_midstream" in faults:
                break
            if content == 5 and "cut" in faults:
                break
            if comments and (reasoning + content) % 10 == 0:
                yield _COMMENT, _PLAIN
    if step.malformed and content == 0:
        yield _MALFORMED, _PLAIN
    if "error_midstream" in faults:
        message = "The engine failed while generating the response"
        yield f"data: {_error_body('server_error', message).decode()}\n\n", _PLAIN
        return
    if "cut" in faults:
        yield "", _CUT
        return
    usage = step.usage(reasoning, content, finish == "tool_calls")
    yield chunks.finish(finish, usage), _PLAIN
    if step.include_usage:
        yield chunks.usage(usage), _PLAIN
    yield _DONE, _PLAIN


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


# --- the server -----------------------------------------------------------------------------


class OfflineModelServer:
    """The offline Kimi K2 Thinking endpoint, served on asyncio from `start()` to `stop()`.

    For tests: `requests` holds every JSON body received, in order; `disconnects` counts streams
    ended by their client leaving (`wait_for_disconnects` waits for it); `active_streams` and
    `connections` (accepted so far) show load and keep-alive at work.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rate: float = 40.0,
        model: str = DEFAULT_MODEL,
    ) -> None:
        self.host = host
        self.port = port
        self.rate = rate
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.disconnects = 0
        self.active_streams = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._fail_counts: dict[str, int] = {}
        self._prefixes: set[bytes] = set()
        self._disconnect_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._stopping = False

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    async def start(self) -> None:
        """Bind and start accepting connections; `port` is the real one afterwards."""
        self._stopping = False
        # A deep backlog: the benchmark opens hundreds of streams at once.
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, backlog=2048, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection, streams included."""
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def wait_for_disconnects(self, count: int, timeout: float = 5.0) -> None:
        """Wait until `count` streams have ended because their client went away."""
        if self.disconnects >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._disconnect_waiters.append((count, future))
        await asyncio.wait_for(future, timeout)

    def _count_disconnect(self) -> None:
        self.disconnects += 1
        for count, future in list(self._disconnect_waiters):
            if self.disconnects >= count:
                self._disconnect_waiters.remove((count, future))
                if not future.done():
                    future.set_result(None)

    # --- connections ---

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        conn = _Connection(reader, writer)
        try:
            while True:
                try:
                    request = await conn.read_request()
                except _BadRequest as exc:
                    body = _error_body("invalid_request_error", str(exc))
                    await self._send(conn, exc.status, body, keep_alive=False)
                    return
                if request is None or not await self._route(conn, request):
                    return
        except ConnectionError:
            pass
        except Exception:
            # A bug here must not look like a provider outage that retries would fix: say so.
            logger.exception("offline model server failed on a request")
            body = _error_body("server_error", "offline model server bug; see its log")
            with contextlib.suppress(ConnectionError):
                await self._send(conn, 500, body, keep_alive=False)
        finally:
            self._tasks.discard(task)
            # On shutdown do not wait for unsent bytes to reach a client that may never read.
            if self._stopping:
                writer.transport.abort()
            else:
                writer.close()

    async def _send(
        self,
        conn: _Connection,
        status: int,
        body: bytes,
        *,
        keep_alive: bool = True,
        headers: tuple[str, ...] = (),
    ) -> bool:
        head = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            "Server: glassbox-offline",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            *headers,
        ]
        conn.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await conn.writer.drain()
        return keep_alive

    async def _route(self, conn: _Connection, request: _Request) -> bool:
        """Answer one request; returns whether the connection stays open."""
        path = request.path.rstrip("/")
        keep = request.keep_alive
        if path in ("/v1/chat/completions", "/chat/completions"):
            if request.method != "POST":
                body = _error_body("invalid_request_error", "use POST")
                return await self._send(conn, 405, body, keep_alive=keep, headers=("Allow: POST",))
            return await self._chat(conn, request)
        if path in ("/health", "/v1/health"):
            payload = b'{"status":"ok"}'
        elif path in ("/v1/models", "/models"):
            model = {"id": self.model, "object": "model", "created": 0, "owned_by": "glassbox"}
            payload = json.dumps({"object": "list", "data": [model]}).encode()
        else:
            body = _error_body("resource_not_found_error", f"no such endpoint: {request.path}")
            return await self._send(conn, 404, body, keep_alive=keep)
        if request.method != "GET":
            body = _error_body("invalid_request_error", "use GET")
            return await self._send(conn, 405, body, keep_alive=keep, headers=("Allow: GET",))
        return await self._send(conn, 200, payload, keep_alive=keep)

    async def _chat(self, conn: _Connection, request: _Request) -> bool:
        keep = request.keep_alive
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            error = _error_body("invalid_request_error", "Invalid request: body is not JSON")
            return await self._send(conn, 400, error, keep_alive=keep)
        self.requests.append(body)
        if len(self.requests) > _REQUEST_LOG_LIMIT:  # long benchmark runs: keep memory bounded
            del self.requests[0]
        messages = body.get("messages")
        users = [m for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
        last_user = _text(users[-1].get("content")) if users else ""
        d = parse_directives(last_user)
        failing = True
        if d.fail_times is not None:
            seen = self._fail_counts[last_user] = self._fail_counts.get(last_user, 0) + 1
            failing = seen <= d.fail_times
        if not failing:
            d.error = None
            d.faults.clear()
        if d.error is not None:
            return await self._send_error(conn, d.error, keep)
        problem = _check_request(body)
        if problem is not None:
            error = _error_body("invalid_request_error", problem)
            return await self._send(conn, 400, error, keep_alive=keep)
        step = self._plan_step(body, d)
        if step.prompt_tokens + (step.max_tokens or 0) > CONTEXT_LIMIT:
            return await self._send_error(conn, "context_length", keep)
        if body.get("stream") is True:
            return await self._stream(conn, step, keep)
        return await self._complete(conn, step, keep)

    async def _send_error(self, conn: _Connection, name: str, keep_alive: bool) -> bool:
        if name not in ERRORS:
            message = f"unknown !error:{name}; known: {', '.join(ERRORS)}"
            body = _error_body("invalid_request_error", message)
            return await self._send(conn, 400, body, keep_alive=keep_alive)
        status, error_type, message = ERRORS[name]
        headers = ("Retry-After: 1",) if name == "rate_limit" else ()
        body = _error_body(error_type, message)
        return await self._send(conn, status, body, keep_alive=keep_alive, headers=headers)

    def _plan_step(self, body: dict[str, Any], d: Directives) -> _Step:
        messages: list[dict[str, Any]] = body["messages"]
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        tail = messages[last_user + 1 :]
        calls = _plan_calls(d, body, tail)
        earlier = sum(
            len(m.get("tool_calls") or []) for m in messages if m.get("role") == "assistant"
        )
        prefix = "functions." if d.vllm_ids else ""
        tool_calls = [
            (f"{prefix}{name}:{earlier + n}", name, arguments)
            for n, (name, arguments) in enumerate(calls)
        ]
        question = d.question
        topic = " ".join(question.split()[:6])[:60] or "Your question"
        intro = f"The user asks: «{question[:80]}». Let me think about {topic}."
        results = [
            f"`{m.get('name') or m.get('tool_call_id')}` returned "
            f"“{' '.join(_text(m.get('content')).split())[:80]}”"
            for m in tail
            if m.get("role") == "tool"
        ]
        if results:
            intro += f" The tool results are in: {'; '.join(results)}."
        if tool_calls:
            names = ", ".join(f"`{name}`" for _, name, _ in tool_calls)
            intro += f" I need {names} for this, so I will call it."
        reasoning = _reasoning_tokens(intro)
        if "hang" not in d.faults:
            reasoning = itertools.islice(reasoning, d.think)
        if tool_calls:
            content: Iterator[str] = iter(())
        elif d.echo is not None:
            content = iter(split_tokens(d.echo))
        else:
            lead = f"Tool results: {'; '.join(results)}." if results else ""
            content = _answer_tokens(question, topic, d.words, lead)
        prompt, cached = self._prompt_tokens(messages)
        stream_options = body.get("stream_options")
        model = body.get("model")
        return _Step(
            model=model if isinstance(model, str) and model else self.model,
            reasoning_field=d.reasoning_field,
            reasoning=reasoning,
            content=content,
            tool_calls=tool_calls,
            max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
            prompt_tokens=prompt,
            cached_tokens=cached,
            include_usage=isinstance(stream_options, dict)
            and stream_options.get("include_usage") is True,
            rate=self.rate if d.rate is None else d.rate,
            think=d.think,
            faults=d.faults,
            malformed=d.malformed,
            comments=d.comments,
        )

    def _prompt_tokens(self, messages: list[dict[str, Any]]) -> tuple[int, int]:
        """Estimate prompt tokens (chars / 4) and how many a prefix cache would have served.

        A message prefix seen byte for byte in an earlier request counts as cached, like
        Moonshot's context cache, so a client that resends history unchanged sees cache hits.
        """
        digest = hashlib.sha256()
        chars = cached_chars = 0
        seen: list[bytes] = []
        for message in messages:
            digest.update(json.dumps(message, sort_keys=True).encode())
            chars += _message_chars(message)
            prefix = digest.digest()
            if prefix in self._prefixes:
                cached_chars = chars
            seen.append(prefix)
        if len(self._prefixes) > 100_000:  # bounded memory for long benchmark runs
            self._prefixes.clear()
        self._prefixes.update(seen)
        return max(1, -(-chars // 4)), cached_chars // 4

    # --- responses ---

    async def _stream(self, conn: _Connection, step: _Step, keep_alive: bool) -> bool:
        """Send the step as SSE, watching the socket so a client that leaves stops it at once."""
        task = asyncio.current_task()
        assert task is not None
        self.active_streams += 1
        conn.streaming = True
        watcher = asyncio.create_task(self._watch(conn, task))
        try:
            connection = "keep-alive" if keep_alive else "close"
            head = (
                "HTTP/1.1 200 OK\r\nServer: glassbox-offline\r\n"
                "Content-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
                f"Transfer-Encoding: chunked\r\nConnection: {connection}\r\n\r\n"
            )
            conn.writer.write(head.encode())
            return await self._write_events(conn, step) and keep_alive
        except asyncio.CancelledError:
            if not conn.disconnected:
                raise
            task.uncancel()
            return False
        except ConnectionError:
            conn.disconnected = True
            return False
        finally:
            conn.streaming = False
            self.active_streams -= 1
            watcher.cancel()
            await asyncio.wait({watcher})
            if conn.disconnected:
                self._count_disconnect()

    async def _watch(self, conn: _Connection, stream: asyncio.Task[None]) -> None:
        """Read while a stream is sent: end of input means the client is gone."""
        while await conn.fill():
            pass  # a pipelined request stays in the buffer for after the stream
        if conn.streaming:
            conn.disconnected = True
            stream.cancel()

    async def _write_events(self, conn: _Connection, step: _Step) -> bool:
        """Write each event as its own HTTP chunk, token i due at start + i / rate (no drift).

        Chunks that fall due together (no rate, or a late wake-up on a busy machine) go out in
        one send: still one event per token for the client, far fewer system calls for us.
        """
        writer = conn.writer
        transport = writer.transport
        loop = asyncio.get_running_loop()
        interval = 1.0 / step.rate if step.rate > 0 else 0.0
        start = loop.time()
        slot = 0
        pending: list[bytes] = []
        for text, pacing in _sse_events(step):
            if pacing != _PLAIN:
                if pacing == _PACED:
                    delay = start + slot * interval - loop.time() if interval else 0.0
                    wait = delay > 0 or slot % _YIELD_EVERY == 0
                    slot += 1
                else:
                    delay, wait = (HANG_INTERVAL if pacing == _SLOW else 0.0), True
                if wait:
                    writer.write(b"".join(pending))
                    pending.clear()
                    if transport.is_closing():
                        raise ConnectionResetError("client went away")
                    if pacing == _CUT:
                        writer.close()  # sends what is buffered, then FIN before the last chunk
                        return False
                    if transport.get_write_buffer_size() > _HIGH_WATER:
                        await writer.drain()
                    await asyncio.sleep(max(delay, 0.0))
            # Every event is ASCII (JSON with ensure_ascii), so characters count as bytes.
            pending.append(f"{len(text):x}\r\n{text}\r\n".encode("ascii"))
        pending.append(b"0\r\n\r\n")
        writer.write(b"".join(pending))
        await writer.drain()
        return True

    async def _complete(self, conn: _Connection, step: _Step, keep_alive: bool) -> bool:
        """Answer without streaming: one chat.completion, at once (no pacing)."""
        if "hang" in step.faults:
            while await conn.fill():
                pass
            self._count_disconnect()
            return False
        if "cut" in step.faults:
            return False
        if "error_midstream" in step.faults:
            return await self._send_error(conn, "server", keep_alive)
        budget = _UNLIMITED if step.max_tokens is None else step.max_tokens
        reasoning = list(itertools.islice(step.reasoning, budget + 1))
        content = list(itertools.islice(step.content, max(0, budget - len(reasoning)) + 1))
        finish = "tool_calls" if step.tool_calls else "stop"
        if len(reasoning) > budget:
            reasoning, content, finish = reasoning[:budget], [], "length"
        elif len(reasoning) + len(content) > budget:
            content, finish = content[: budget - len(reasoning)], "length"
        calls = step.tool_calls if finish == "tool_calls" else []
        message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
        if step.reasoning_field == "think":
            if reasoning:
                message["content"] = f"<think>{''.join(reasoning)}</think>{message['content']}"
        else:
            message[step.reasoning_field] = "".join(reasoning)
        if calls:
            message["tool_calls"] = [
                {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                for i, n, a in calls
            ]
        completion = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": step.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": json.loads(step.usage(len(reasoning), len(content), bool(calls))),
        }
        return await self._send(conn, 200, json.dumps(completion).encode(), keep_alive=keep_alive)


# --- running it -----------------------------------------------------------------------------


class ThreadedServer:
    """An `OfflineModelServer` on its own event loop in a daemon thread (for sync callers)."""

    def __init__(
        self, server: OfflineModelServer, loop: asyncio.AbstractEventLoop, thread: threading.Thread
    ) -> None:
        self.server = server
        self._loop = loop
        self._thread = thread

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.server.requests

    def wait_for_disconnects(self, count: int, timeout: float = 5.0) -> None:
        """Block until `count` client disconnects were seen (see the server's method)."""
        waiter = self.server.wait_for_disconnects(count, timeout)
        asyncio.run_coroutine_threadsafe(waiter, self._loop).result(timeout + 1)

    def stop(self) -> None:
        """Stop the server and its thread; calling it twice is harmless."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ThreadedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_in_thread(
    *, rate: float = 40.0, host: str = "127.0.0.1", port: int = 0, model: str = DEFAULT_MODEL
) -> ThreadedServer:
    """Start a server in a daemon thread and return once it listens."""
    server = OfflineModelServer(host, port, rate=rate, model=model)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="offline-model-server", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        raise
    return ThreadedServer(server, loop, thread)


async def _serve(host: str, port: int, rate: float, model: str) -> None:
    server = OfflineModelServer(host, port, rate=rate, model=model)
    await server.start()
    print(f"offline model server listening on {server.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    """Command line: serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m agents.offline_server",
        description="Serve a deterministic Kimi K2 Thinking look-alike over HTTP.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--rate", type=float, default=40.0, help="tokens per second (0: no limit)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model id listed by /v1/models")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.rate, args.model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
