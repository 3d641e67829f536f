"""The SSE stream parser understands every provider shape of a thinking model's stream."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from agents.errors import ErrorKind, ProviderError
from agents.stream import (
    ContentDelta,
    MalformedLine,
    ReasoningDelta,
    StreamEvent,
    StreamParser,
    ToolCall,
    ToolCallDelta,
    Usage,
)

# The project's read-only shared folder sits beside the checkout (GLASSBOX_SHARED_DIR elsewhere).
SHARED = Path(
    os.environ.get("GLASSBOX_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared"
)
RECORDED = SHARED / "fixtures" / "kimi-recorded"
MOONSHOT_PARALLEL = "openrouter-moonshot-upstream-kimi-k2-0905-parallel-tool-calls-stream.vcr.yaml"
CHUTES_REASONING = "openrouter-chutes-kimi-k2.5-reasoning-then-tool-call-stream.vcr.yaml"


def recorded_response_bodies(name: str) -> list[str]:
    """The SSE bodies of a go-vcr cassette's responses, in order.

    The bodies are YAML literal blocks (`body: |+`); reading just those blocks keeps the test
    suite free of a YAML dependency.
    """
    lines = (RECORDED / name).read_text().splitlines()
    bodies: list[str] = []
    position = 0
    while position < len(lines):
        if lines[position].strip() != "body: |+":
            position += 1
            continue
        position += 1
        block: list[str] = []
        indent: int | None = None
        while position < len(lines):
            line = lines[position]
            if line.strip():
                depth = len(line) - len(line.lstrip(" "))
                indent = depth if indent is None else indent
                if depth < indent:
                    break
                block.append(line[indent:])
            else:
                block.append("")
            position += 1
        bodies.append("\n".join(block))
    return bodies


def chunk(
    delta: dict[str, Any] | None = None,
    *,
    finish_reason: str | None = None,
    choice_usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish_reason}
    if choice_usage is not None:
        choice["usage"] = choice_usage
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice]}


def data(obj: object) -> str:
    return "data: " + json.dumps(obj)


def run(lines: Iterable[str]) -> tuple[StreamParser, list[StreamEvent]]:
    parser = StreamParser()
    events: list[StreamEvent] = []
    for line in lines:
        events.extend(parser.feed_line(line))
    events.extend(parser.finish())
    return parser, events


def reasoning_of(events: Iterable[StreamEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, ReasoningDelta))


def content_of(events: Iterable[StreamEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, ContentDelta))


def contents(*pieces: str) -> list[str]:
    return [data(chunk({"content": piece})) for piece in pieces]


def test_moonshot_reasoning_content_then_answer_with_usage_counted_once() -> None:
    usage = {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29, "cached_tokens": 4}
    lines = [
        data(chunk({"role": "assistant", "content": ""})),
        data(chunk({"reasoning_content": "The user "})),
        data(chunk({"reasoning_content": ""})),
        data(chunk({"reasoning_content": "wants 2+2."})),
        data(chunk({"content": None, "reasoning_content": None})),
        data(chunk({"content": "It is"})),
        data(chunk({"content": " 4."})),
        data(chunk({}, finish_reason="stop", choice_usage=usage)),
        # stream_options.include_usage may repeat the same numbers in a trailing chunk.
        data({"id": "chatcmpl-1", "choices": [], "usage": usage}),
        "data: [DONE]",
    ]

    parser, events = run(lines)

    assert events == [
        ReasoningDelta("The user "),
        ReasoningDelta("wants 2+2."),
        ContentDelta("It is"),
        ContentDelta(" 4."),
    ]
    assert parser.usage == Usage(
        prompt_tokens=20, cached_tokens=4, completion_tokens=9, total_tokens=29
    )
    assert parser.finish_reason == "stop"
    assert parser.done
    assert parser.tool_calls == []


def test_reasoning_field_from_vllm_and_openrouter_is_reasoning() -> None:
    lines = [
        data(chunk({"reasoning": "Think"})),
        data(chunk({"reasoning": "ing.", "content": ""})),
        *contents("Done."),
    ]

    _, events = run(lines)

    assert events == [ReasoningDelta("Think"), ReasoningDelta("ing."), ContentDelta("Done.")]


def test_reasoning_sent_under_both_names_is_taken_once() -> None:
    _, events = run([data(chunk({"reasoning_content": "same", "reasoning": "same"}))])

    assert events == [ReasoningDelta("same")]


THINK_SAMPLE = "<think>Let me think: 2+2.</think>\n\nThe answer is 4."


@pytest.mark.parametrize("first_cut", range(len(THINK_SAMPLE) + 1))
def test_inline_think_tags_split_at_any_two_points_still_separate_reasoning(
    first_cut: int,
) -> None:
    for second_cut in range(first_cut, len(THINK_SAMPLE) + 1):
        pieces = [
            THINK_SAMPLE[:first_cut],
            THINK_SAMPLE[first_cut:second_cut],
            THINK_SAMPLE[second_cut:],
        ]

        _, events = run(contents(*pieces))

        assert reasoning_of(events) == "Let me think: 2+2.", pieces
        assert content_of(events) == "The answer is 4.", pieces
        assert all(event.text for event in events if hasattr(event, "text"))


def test_inline_think_one_character_per_chunk() -> None:
    _, events = run(contents(*THINK_SAMPLE))

    assert reasoning_of(events) == "Let me think: 2+2."
    assert content_of(events) == "The answer is 4."
    # Reasoning flows as it comes; only possible tag prefixes wait.
    assert len([event for event in events if isinstance(event, ReasoningDelta)]) > 10


def test_only_a_minimal_possible_tag_prefix_is_held_back() -> None:
    parser = StreamParser()

    first = parser.feed_chunk(chunk({"content": "<think>abc</"}))
    second = parser.feed_chunk(chunk({"content": "thin"}))
    third = parser.feed_chunk(chunk({"content": "k>Hi"}))

    assert first == [ReasoningDelta("abc")]
    assert second == []
    assert third == [ContentDelta("Hi")]


def test_a_lone_angle_bracket_that_is_not_a_tag_is_released_at_once() -> None:
    parser = StreamParser()

    held = parser.feed_chunk(chunk({"content": "<thi"}))
    released = parser.feed_chunk(chunk({"content": "s is html"}))

    assert held == []
    assert released == [ContentDelta("<this is html")]


def test_leading_whitespace_before_think_is_dropped() -> None:
    _, events = run(contents("\n ", "<think>why", "</think>Because."))

    assert events == [ReasoningDelta("why"), ContentDelta("Because.")]


def test_think_tag_later_in_the_content_is_just_text() -> None:
    text = "Use <think> tags like <think>this</think>."

    _, events = run(contents(text))

    assert events == [ContentDelta(text)]


def test_everything_after_the_closing_tag_is_content() -> None:
    _, events = run(contents("<think>a</think>b<think>c</think>"))

    assert reasoning_of(events) == "a"
    assert content_of(events) == "b<think>c</think>"


def test_unclosed_think_is_flushed_as_reasoning_at_the_end() -> None:
    _, events = run(contents("<think>still thinking </thi"))

    assert reasoning_of(events) == "still thinking </thi"
    assert content_of(events) == ""


def test_a_partial_open_tag_at_the_end_is_content() -> None:
    _, events = run(contents("<thi"))

    assert events == [ContentDelta("<thi")]


def test_whitespace_only_content_produces_nothing() -> None:
    parser, events = run(contents(" ", "\n"))

    assert events == []
    assert parser.finish() == []


def test_leading_whitespace_before_plain_content_is_kept() -> None:
    _, events = run(contents("\n\n", "Hello"))

    assert content_of(events) == "\n\nHello"


def test_sse_comments_blank_lines_and_other_fields_are_ignored() -> None:
    lines = [
        ": OPENROUTER PROCESSING",
        "",
        "event: message",
        "id: 7",
        "retry: 1000",
        "data:" + json.dumps(chunk({"content": "no space after the colon"})),
        "data: " + json.dumps(chunk({"content": "!"})) + "\r",
        "data",
        "data: [DONE]",
    ]

    parser, events = run(lines)

    assert events == [ContentDelta("no space after the colon"), ContentDelta("!")]
    assert parser.done


def test_a_malformed_line_is_reported_and_the_stream_goes_on() -> None:
    lines = [
        *contents("a"),
        'data: {"choices": [{"delta": {"content": "b"',
        "data: [1, 2]",
        *contents("c"),
    ]

    _, events = run(lines)

    assert events[0] == ContentDelta("a")
    assert isinstance(events[1], MalformedLine)
    assert events[1].line == lines[1]
    assert "invalid JSON" in events[1].reason
    assert events[2] == MalformedLine(line="data: [1, 2]", reason="not a JSON object")
    assert events[3] == ContentDelta("c")


def test_an_error_object_inside_a_200_stream_raises() -> None:
    parser = StreamParser()
    parser.feed_line(data(chunk({"content": "partial"})))

    with pytest.raises(ProviderError) as raised:
        parser.feed_line(data({"error": {"type": "engine_overloaded_error", "message": "busy"}}))

    assert raised.value.kind is ErrorKind.OVERLOADED


def test_openrouter_mid_stream_error_raises() -> None:
    line = data(
        {
            "id": "gen-1",
            "error": {"code": 502, "message": "Upstream error from Chutes"},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }
    )

    with pytest.raises(ProviderError) as raised:
        StreamParser().feed_line(line)

    assert raised.value.kind is ErrorKind.SERVER
    assert raised.value.message == "Upstream error from Chutes"


def test_a_null_error_field_is_not_an_error() -> None:
    events = StreamParser().feed_chunk({**chunk({"content": "ok"}), "error": None})

    assert events == [ContentDelta("ok")]


def tool_fragment(
    index: int | None, arguments: str, *, call_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    fragment: dict[str, Any] = {"function": {"arguments": arguments}}
    if index is not None:
        fragment["index"] = index
    if call_id is not None:
        fragment.update(id=call_id, type="function")
        fragment["function"]["name"] = name
    return fragment


def tool_chunk(*fragments: dict[str, Any]) -> str:
    return data(chunk({"content": None, "tool_calls": list(fragments)}))


def test_parallel_tool_calls_are_accumulated_by_index() -> None:
    lines = [
        tool_chunk(tool_fragment(0, "", call_id="add:0", name="add")),
        tool_chunk(tool_fragment(0, '{"a": ')),
        tool_chunk(tool_fragment(1, "", call_id="multiply:1", name="multiply")),
        tool_chunk(tool_fragment(0, "2}")),
        tool_chunk(tool_fragment(1, '{"a": 3}')),
        data(chunk({}, finish_reason="tool_calls")),
    ]

    parser, events = run(lines)

    assert parser.tool_calls == [
        ToolCall(index=0, id="add:0", name="add", arguments='{"a": 2}'),
        ToolCall(index=1, id="multiply:1", name="multiply", arguments='{"a": 3}'),
    ]
    assert events[:2] == [
        ToolCallDelta(index=0, id="add:0", name="add", arguments=""),
        ToolCallDelta(index=0, id=None, name=None, arguments='{"a": '),
    ]
    assert parser.finish_reason == "tool_calls"


def test_several_whole_calls_in_one_delta() -> None:
    parser, _ = run(
        [
            tool_chunk(
                tool_fragment(0, '{"q": "x"}', call_id="functions.search:0", name="search"),
                tool_fragment(1, '{"q": "y"}', call_id="functions.search:1", name="search"),
            )
        ]
    )

    assert [(call.id, call.arguments) for call in parser.tool_calls] == [
        ("functions.search:0", '{"q": "x"}'),
        ("functions.search:1", '{"q": "y"}'),
    ]


def test_a_missing_index_on_a_single_call_means_index_zero() -> None:
    parser, _ = run(
        [
            tool_chunk(tool_fragment(None, "", call_id="call_1", name="weather")),
            tool_chunk(tool_fragment(None, '{"city":')),
            tool_chunk(tool_fragment(None, '"Rome"}')),
        ]
    )

    assert parser.tool_calls == [
        ToolCall(index=0, id="call_1", name="weather", arguments='{"city":"Rome"}')
    ]


def test_calls_without_index_but_with_new_ids_get_the_next_index() -> None:
    parser, _ = run(
        [
            tool_chunk(tool_fragment(None, "{}", call_id="a", name="one")),
            tool_chunk(tool_fragment(None, "{}", call_id="b", name="two")),
            tool_chunk({"id": "b", "function": {"arguments": ""}}),
        ]
    )

    assert [(call.index, call.id, call.name) for call in parser.tool_calls] == [
        (0, "a", "one"),
        (1, "b", "two"),
    ]


def test_an_id_repeated_on_every_fragment_is_reported_once() -> None:
    _, events = run(
        [
            tool_chunk(tool_fragment(0, "", call_id="x:0", name="x")),
            tool_chunk(tool_fragment(0, "{}", call_id="x:0", name="x")),
        ]
    )

    assert events == [
        ToolCallDelta(index=0, id="x:0", name="x", arguments=""),
        ToolCallDelta(index=0, id=None, name=None, arguments="{}"),
    ]


def test_empty_fragments_produce_no_event_and_decoded_arguments_are_encoded() -> None:
    parser, events = run(
        [
            tool_chunk(tool_fragment(0, "", call_id="f:0", name="f")),
            tool_chunk(tool_fragment(0, "")),
            tool_chunk({"index": 0, "function": {"arguments": {"k": 1}}}),
        ]
    )

    assert len(events) == 2
    assert parser.tool_calls[0].arguments == '{"k": 1}'


def test_a_call_without_an_id_gets_one_in_moonshot_format() -> None:
    parser, _ = run([tool_chunk({"index": 2, "function": {"name": "add", "arguments": "{}"}})])

    assert parser.tool_calls == [ToolCall(index=2, id="add:2", name="add", arguments="{}")]


def test_leaked_vllm_tool_call_markers_are_removed() -> None:
    _, events = run(
        [
            data(chunk({"reasoning_content": "plan<|tool_calls_section_begin|>"})),
            data(chunk({"reasoning_content": "<|tool_call_begin|>"})),
            *contents("<|tool_call_argument_begin|>answer<|tool_call_end|>"),
            *contents("<|tool_calls_section_end|>"),
        ]
    )

    assert events == [ReasoningDelta("plan"), ContentDelta("answer")]


def test_usage_reads_cached_and_reasoning_tokens_from_every_place() -> None:
    moonshot = Usage.from_dict(
        {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150, "cached_tokens": 80}
    )
    openai_style = Usage.from_dict(
        {
            "prompt_tokens": 100,
            "completion_tokens": 50,
            "prompt_tokens_details": {"cached_tokens": 60},
            "completion_tokens_details": {"reasoning_tokens": 30},
        }
    )

    assert moonshot == Usage(100, 80, 50, 0, 150)
    assert openai_style == Usage(100, 60, 50, 30, 150)
    assert Usage.from_dict({"prompt_tokens": None, "completion_tokens": "x"}) == Usage()


def test_the_last_usage_seen_wins_and_is_never_added() -> None:
    parser, _ = run(
        [
            data(chunk({}, finish_reason="stop", choice_usage={"prompt_tokens": 5})),
            data({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}),
        ]
    )

    assert parser.usage == Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7)


def test_finish_reason_is_kept_when_a_later_chunk_has_none() -> None:
    parser, _ = run([data(chunk({}, finish_reason="length")), data(chunk({"content": ""}))])

    assert parser.finish_reason == "length"


def test_choices_other_than_the_first_are_ignored() -> None:
    other = {"index": 1, "delta": {"content": "not ours"}, "finish_reason": "stop"}

    parser, events = run([data({"choices": [other]}), data({"choices": None})])

    assert events == []
    assert parser.finish_reason is None


def test_recorded_moonshot_parallel_tool_calls_stream() -> None:
    first, second = recorded_response_bodies(MOONSHOT_PARALLEL)

    parser, events = run(first.splitlines())

    assert content_of(events) == (
        "I'll perform both addition and multiplication with the numbers 2 and 3."
    )
    assert reasoning_of(events) == ""
    assert parser.tool_calls == [
        ToolCall(index=0, id="add:0", name="add", arguments='{"a": 2, "b": 3}'),
        ToolCall(index=1, id="multiply:1", name="multiply", arguments='{"a": 2, "b": 3}'),
    ]
    assert parser.finish_reason == "tool_calls"
    assert parser.usage == Usage(prompt_tokens=124, completion_tokens=55, total_tokens=179)
    assert parser.done

    parser, events = run(second.splitlines())

    assert content_of(events).startswith("Here are the")
    assert parser.tool_calls == []
    assert parser.finish_reason == "stop"
    assert parser.usage == Usage(prompt_tokens=209, completion_tokens=41, total_tokens=250)


def test_recorded_chutes_reasoning_then_tool_call_stream() -> None:
    first, second = recorded_response_bodies(CHUTES_REASONING)

    parser, events = run(first.splitlines())

    reasoning = reasoning_of(events)
    assert reasoning.startswith(" The user is asking for the weather in Florence")
    assert content_of(events) == ""
    assert not any(isinstance(event, MalformedLine) for event in events)
    last_reasoning = max(i for i, e in enumerate(events) if isinstance(e, ReasoningDelta))
    first_tool = min(i for i, e in enumerate(events) if isinstance(e, ToolCallDelta))
    assert last_reasoning < first_tool
    assert parser.tool_calls == [
        ToolCall(
            index=0,
            id="functions.weather:0",
            name="weather",
            arguments='{"location": "Florence,Italy"}',
        )
    ]
    assert parser.finish_reason == "tool_calls"
    assert parser.usage is not None
    assert (parser.usage.prompt_tokens, parser.usage.reasoning_tokens) == (69, 66)
    assert parser.done

    parser, events = run(second.splitlines())

    assert reasoning_of(events)
    assert content_of(events)
    assert parser.finish_reason == "stop"
