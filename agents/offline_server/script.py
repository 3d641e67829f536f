"""The script language of the offline model server, and the text it generates.

`parse_directives` reads the ``!name`` / ``!name:value`` tokens of the last user message (the
table is in the package docstring); the rest is deterministic text: endless reasoning, Markdown
answers of an exact token length, and the tool calls a step makes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_THINK = 60
DEFAULT_WORDS = 120

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


def reasoning_tokens(intro: str) -> Iterator[str]:
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


def answer_tokens(question: str, topic: str, words: int, lead: str) -> Iterator[str]:
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


# --- tool calls -----------------------------------------------------------------------------


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


def plan_calls(
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
