"""The offline model server speaks Kimi K2 Thinking's protocol over real HTTP."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from agents.offline_server import OfflineModelServer, parse_directives, start_in_thread

ROOT = Path(__file__).resolve().parent.parent

ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
MUL_TOOL = {
    "type": "function",
    "function": {"name": "mul", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture
async def server() -> AsyncIterator[OfflineModelServer]:
    # Unpaced, so the suite stays fast; pacing has its own test.
    model_server = OfflineModelServer(rate=0)
    await model_server.start()
    yield model_server
    await model_server.stop()


@pytest.fixture
async def http(server: OfflineModelServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": "Bearer anything"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=5) as client:
        yield client


def chat(text: str = "", *, messages: list[dict[str, Any]] | None = None, **extra: Any) -> dict:
    body: dict[str, Any] = {
        "model": "kimi-k2-thinking",
        "messages": messages or [{"role": "user", "content": text}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 32000,
    }
    body.update(extra)
    return body


async def stream_lines(http: httpx.AsyncClient, body: dict[str, Any]) -> list[str]:
    async with http.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line async for line in response.aiter_lines() if line]


def data(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON chunks of a stream (not comments, not [DONE], not the !malformed line)."""
    return [
        json.loads(line[6:])
        for line in lines
        if line.startswith("data: {") and line != "data: {not json"
    ]


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk["choices"][0]["delta"] for chunk in chunks if chunk.get("choices")]


def joined(chunks: list[dict[str, Any]], key: str) -> str:
    return "".join(delta.get(key) or "" for delta in deltas(chunks))


def assemble_calls(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls accumulated by index, the way a client must."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas(chunks):
        for fragment in delta.get("tool_calls") or []:
            call = calls.setdefault(
                fragment["index"], {"type": "function", "function": {"arguments": ""}}
            )
            if "id" in fragment:
                call["id"] = fragment["id"]
                call["function"]["name"] = fragment["function"]["name"]
            call["function"]["arguments"] += fragment["function"].get("arguments", "")
    return [calls[index] for index in sorted(calls)]


def finish_choice(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    (choice,) = [
        c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    return choice


# --- stream shape -----------------------------------------------------------------------------


async def test_stream_has_role_chunk_reasoning_then_content_usage_and_done(
    server: OfflineModelServer, http: httpx.AsyncClient
) -> None:
    lines = await stream_lines(http, chat("How do I sort a list in Python?"))
    chunks = data(lines)

    assert lines[-1] == "data: [DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    kinds = [
        "r" if d.get("reasoning_content") else "c"
        for d in deltas(chunks)[1:]
        if d.keys() - {"role"}
    ]
    assert kinds == sorted(kinds, reverse=True)  # every reasoning delta before any content delta
    reasoning, content = joined(chunks, "reasoning_content"), joined(chunks, "content")
    assert reasoning.startswith("The user asks: «How do I sort a list in Python?». Let me think")
    assert "How do I sort a list in Python?" in content
    assert "\n## " in "\n" + content and "\n- " in content and "```python\n" in content
    choice = finish_choice(chunks)
    assert choice["finish_reason"] == "stop"
    usage = choice["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 60
    assert usage["completion_tokens"] == 60 + 120
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["cached_tokens"] == 0
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == usage
    assert server.requests[-1]["messages"][0]["content"] == "How do I sort a list in Python?"


async def test_trailing_usage_chunk_only_when_include_usage(http: httpx.AsyncClient) -> None:
    chunks = data(await stream_lines(http, chat("Hi !think:2 !words:2", stream_options=None)))

    assert all(chunk["choices"] for chunk in chunks)
    assert finish_choice(chunks)["usage"]["completion_tokens"] == 4


async def test_openai_sdk_streams_reasoning_in_model_extra(server: OfflineModelServer) -> None:
    client = AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    stream = await client.chat.completions.create(
        model="kimi-k2-thinking",
        messages=[{"role": "user", "content": "What is SSE? !think:12 !words:30"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning = content = ""
    finish = usage = None
    async for chunk in stream:
        if chunk.usage is not None and not chunk.choices:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    await client.close()

    assert reasoning.startswith("The user asks: «What is SSE?»")
    assert "What is SSE?" in content
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 42


async def test_reasoning_field_directive_uses_delta_reasoning(http: httpx.AsyncClient) -> None:
    chunks = data(await stream_lines(http, chat("Why? !field:reasoning !think:5")))

    assert joined(chunks, "reasoning").startswith("The user asks: «Why?»")
    assert joined(chunks, "reasoning_content") == ""


async def test_think_field_directive_inlines_tags_split_across_chunks(
    http: httpx.AsyncClient,
) -> None:
    chunks = data(await stream_lines(http, chat("Why? !field:think !think:5 !words:10")))
    pieces = [d["content"] for d in deltas(chunks) if d.get("content")]

    assert pieces[:2] == ["<thi", "nk>The "]
    assert "</th" in pieces and "ink>" in pieces
    content = "".join(pieces)
    assert content.startswith("<think>The user asks: «Why?»")
    assert "</think>## Why?" in content
    assert joined(chunks, "reasoning_content") == ""


async def test_directives_are_stripped_from_the_quoted_question(http: httpx.AsyncClient) -> None:
    chunks = data(await stream_lines(http, chat("Explain <b>tags</b> !think:12 !words:40 please")))

    assert joined(chunks, "reasoning_content").startswith(
        "The user asks: «Explain <b>tags</b> please»."
    )
    assert "!think" not in joined(chunks, "content")


async def test_echo_directive_makes_the_answer_exactly_that_text(http: httpx.AsyncClient) -> None:
    text = "<img src=x onerror=alert(1)> and [link](javascript:alert(1))"
    chunks = data(await stream_lines(http, chat(f"Say it !think:3\n!echo:{text}\nthanks")))

    assert joined(chunks, "content") == text


async def test_long_answer_is_many_markdown_blocks_of_exact_length(
    http: httpx.AsyncClient,
) -> None:
    chunks = data(await stream_lines(http, chat("Tell me everything !think:0 !words:3000")))
    content = joined(chunks, "content")

    assert sum(1 for d in deltas(chunks) if d.get("content")) == 3000
    assert finish_choice(chunks)["usage"]["completion_tokens"] == 3000
    assert content.count("\n\n") > 100
    assert content.count("```") % 2 == 0  # the cut never lands inside a code fence
    assert "| --- |" in content and "\n> " in content and "\n1. " in content


def test_parse_directives_reads_tool_specs_with_spaces_in_json() -> None:
    d = parse_directives('Sum !tool:add:{"a": 1, "b": 2} !tool:mul now !loop:3 !rate:7.5')

    assert d.tools == [("add", '{"a": 1, "b": 2}'), ("mul", "{}")]
    assert (d.loop, d.rate, d.question) == (3, 7.5, "Sum now")


# --- non-streaming and other endpoints ----------------------------------------------------------


async def test_non_streaming_returns_a_complete_chat_completion(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/chat/completions", json=chat("Define recursion !think:7 !words:25", stream=False)
    )
    completion = response.json()

    assert response.status_code == 200
    assert completion["object"] == "chat.completion"
    (choice,) = completion["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["reasoning_content"].startswith("The user asks: «Define recursion»")
    assert choice["message"]["content"].startswith("## Define recursion")
    assert completion["usage"]["completion_tokens"] == 32
    assert completion["usage"]["completion_tokens_details"] == {"reasoning_tokens": 7}


async def test_models_health_and_unknown_paths(http: httpx.AsyncClient) -> None:
    models = (await http.get("/models")).json()
    health = await http.get(str(http.base_url).removesuffix("/v1/") + "/health")
    missing = await http.get("/nope")
    wrong_method = await http.get("/chat/completions")

    assert [m["id"] for m in models["data"]] == ["kimi-k2-thinking"]
    assert health.json() == {"status": "ok"}
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "resource_not_found_error"
    assert wrong_method.status_code == 405


async def test_any_model_name_is_echoed(http: httpx.AsyncClient) -> None:
    chunks = data(await stream_lines(http, chat("Hi !think:1 !words:1", model="my-own-model")))

    assert {chunk["model"] for chunk in chunks} == {"my-own-model"}


async def test_max_tokens_cuts_the_step_with_finish_reason_length(
    http: httpx.AsyncClient,
) -> None:
    chunks = data(await stream_lines(http, chat("Hi !think:8 !words:100", max_tokens=10)))

    choice = finish_choice(chunks)
    assert choice["finish_reason"] == "length"
    assert choice["usage"]["completion_tokens"] == 10


async def test_prompt_beyond_the_context_window_is_rejected(http: httpx.AsyncClient) -> None:
    response = await http.post("/chat/completions", json=chat("Hi", max_tokens=262_144))

    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "message": "Invalid request: Your request exceeded model token limit: 262144",
    }


async def test_resent_history_is_reported_as_cached_prompt_tokens(http: httpx.AsyncClient) -> None:
    history = [
        {"role": "system", "content": "You are terse. " * 40},
        {"role": "user", "content": "First question !think:1 !words:1"},
    ]
    first = data(await stream_lines(http, chat(messages=history)))
    history += [
        {"role": "assistant", "content": "Answer.", "reasoning_content": "Thought."},
        {"role": "user", "content": "Second question !think:1 !words:1"},
    ]
    second = data(await stream_lines(http, chat(messages=history)))

    assert finish_choice(first)["usage"]["cached_tokens"] == 0
    usage = finish_choice(second)["usage"]
    assert 150 < usage["cached_tokens"] < usage["prompt_tokens"]


async def test_keep_alive_serves_several_streams_on_one_connection(
    server: OfflineModelServer, http: httpx.AsyncClient
) -> None:
    for _ in range(3):
        await stream_lines(http, chat("Hi !think:2 !words:2"))
    await http.post("/chat/completions", json=chat("Hi !think:2 !words:2", stream=False))

    assert server.connections == 1


async def test_pipelined_requests_and_chunked_request_bodies(server: OfflineModelServer) -> None:
    body = json.dumps(chat("Hi !think:1 !words:1", stream=False)).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked
        + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()

    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert b'"object": "chat.completion"' in raw and raw.endswith(b'{"status":"ok"}')


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "error_type"),
    [
        ("invalid_request", 400, "invalid_request_error"),
        ("context_length", 400, "invalid_request_error"),
        ("content_filter", 400, "content_filter"),
        ("auth", 401, "invalid_authentication_error"),
        ("permission", 403, "permission_denied_error"),
        ("not_found", 404, "resource_not_found_error"),
        ("overloaded", 429, "engine_overloaded_error"),
        ("rate_limit", 429, "rate_limit_reached_error"),
        ("quota", 429, "exceeded_current_quota_error"),
        ("server", 500, "server_error"),
        ("timeout", 504, "timeout"),
    ],
)
async def test_error_directive_answers_with_status_and_error_type(
    http: httpx.AsyncClient, name: str, status: int, error_type: str
) -> None:
    response = await http.post("/chat/completions", json=chat(f"Hi !error:{name}"))

    assert response.status_code == status
    assert response.json()["error"]["type"] == error_type
    assert response.json()["error"]["message"]
    assert response.headers.get("retry-after") == ("1" if name == "rate_limit" else None)


async def test_openai_sdk_maps_error_statuses(server: OfflineModelServer) -> None:
    client = AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(
            model="kimi-k2-thinking",
            messages=[{"role": "user", "content": "Hi !error:overloaded"}],
            stream=True,
        )
    await client.close()

    assert caught.value.status_code == 429
    assert caught.value.body == {
        "type": "engine_overloaded_error",
        "message": "The engine is currently overloaded, please try again later",
    }


async def test_fail_times_fails_only_the_first_requests_with_that_message(
    http: httpx.AsyncClient,
) -> None:
    body = chat("Retry me !error:overloaded !fail_times:2 !think:1 !words:1", stream=False)
    statuses = [(await http.post("/chat/completions", json=body)).status_code for _ in range(3)]
    other = await http.post("/chat/completions", json=chat("Other !error:server !fail_times:1"))

    assert statuses == [429, 429, 200]
    assert other.status_code == 500


async def test_error_midstream_sends_an_error_object_inside_the_200_stream(
    http: httpx.AsyncClient,
) -> None:
    lines = await stream_lines(http, chat("Hi !error_midstream !think:4 !words:50"))
    chunks = data(lines)

    assert joined(chunks, "reasoning_content") and joined(chunks, "content")
    assert chunks[-1] == {
        "error": {"type": "server_error", "message": chunks[-1]["error"]["message"]}
    }
    assert "data: [DONE]" not in lines
    assert not any(c.get("choices") and c["choices"][0]["finish_reason"] for c in chunks)


async def test_malformed_line_is_inserted_and_the_stream_goes_on(http: httpx.AsyncClient) -> None:
    lines = await stream_lines(http, chat("Hi !malformed !think:3 !words:10"))

    assert lines.count("data: {not json") == 1
    assert lines[-1] == "data: [DONE]"
    assert finish_choice(data(lines))["usage"]["completion_tokens"] == 13


async def test_comments_directive_sends_sse_comment_lines(http: httpx.AsyncClient) -> None:
    lines = await stream_lines(http, chat("Hi !comments !think:10 !words:20"))

    assert lines[0] == ": OPENROUTER PROCESSING"
    assert lines.count(": OPENROUTER PROCESSING") >= 3
    assert lines[-1] == "data: [DONE]"


async def test_cut_drops_the_connection_without_finish_or_done(http: httpx.AsyncClient) -> None:
    lines: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with http.stream("POST", "/chat/completions", json=chat("Hi !cut")) as response:
            async for line in response.aiter_lines():
                lines.append(line)

    assert joined(data(lines), "content")
    assert "data: [DONE]" not in lines


# --- tool calls ---------------------------------------------------------------------------------


async def test_parallel_tool_calls_stream_fragments_by_index(http: httpx.AsyncClient) -> None:
    text = 'Compute !tool:add:{"a": 1, "b": 2} !tool:mul:{"x": [3, 4]} !think:5'
    chunks = data(await stream_lines(http, chat(text, tools=[ADD_TOOL, MUL_TOOL])))
    fragments = [d["tool_calls"] for d in deltas(chunks) if d.get("tool_calls")]

    assert joined(chunks, "reasoning_content").startswith("The user asks: «Compute»")
    assert joined(chunks, "content") == ""
    for index, name in enumerate(["add", "mul"]):
        (first,) = [f for group in fragments for f in group if f["index"] == index][:1]
        assert first["type"] == "function" and first["function"] == {
            "name": name,
            "arguments": "",
        }
    assert any(len(group) == 2 for group in fragments)
    assert sum(1 for group in fragments for f in group if f["index"] == 0) >= 3
    calls = assemble_calls(chunks)
    assert [c["id"] for c in calls] == ["add:0", "mul:1"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"a": 1, "b": 2},
        {"x": [3, 4]},
    ]
    assert finish_choice(chunks)["finish_reason"] == "tool_calls"


async def test_vllm_id_directive_prefixes_functions(http: httpx.AsyncClient) -> None:
    chunks = data(await stream_lines(http, chat("Add !tool:add:{} !ids:vllm", tools=[ADD_TOOL])))

    assert [c["id"] for c in assemble_calls(chunks)] == ["functions.add:0"]


async def test_bad_json_and_unknown_tool_directives(http: httpx.AsyncClient) -> None:
    chunks = data(await stream_lines(http, chat("Go !badjson !unknown_tool", tools=[ADD_TOOL])))
    calls = assemble_calls(chunks)

    assert [c["function"]["name"] for c in calls] == ["add", "does_not_exist"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(calls[0]["function"]["arguments"])


async def test_after_tool_results_the_answer_quotes_them(http: httpx.AsyncClient) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": 'Sum !tool:add:{"a": 1, "b": 2}'},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "I will add.",
            "tool_calls": [
                {"id": "add:0", "type": "function", "function": {"name": "add", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "add:0", "name": "add", "content": "3"},
    ]
    chunks = data(await stream_lines(http, chat(messages=messages, tools=[ADD_TOOL])))

    assert finish_choice(chunks)["finish_reason"] == "stop"
    assert joined(chunks, "content").startswith("Tool results: `add` returned “3”.")


async def test_loop_directive_calls_a_tool_until_n_results(http: httpx.AsyncClient) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Count !loop:3 !think:4"}]
    ids = []
    for _ in range(5):
        chunks = data(await stream_lines(http, chat(messages=messages, tools=[ADD_TOOL])))
        if finish_choice(chunks)["finish_reason"] == "stop":
            break
        calls = assemble_calls(chunks)
        ids += [call["id"] for call in calls]
        reasoning = joined(chunks, "reasoning_content")
        messages.append(
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": reasoning,
                "tool_calls": calls,
            }
        )
        messages += [
            {"role": "tool", "tool_call_id": c["id"], "name": "add", "content": "2"} for c in calls
        ]

    assert ids == ["add:0", "add:1", "add:2"]
    assert json.loads(messages[1]["tool_calls"][0]["function"]["arguments"]) == {"a": 1, "b": 1}
    assert joined(chunks, "content").startswith("Tool results: `add` returned “2”")


def _tool_turn(reasoning: object, tool_call_id: str = "add:0") -> list[dict[str, Any]]:
    call = {"id": "add:0", "type": "function", "function": {"name": "add", "arguments": "{}"}}
    assistant: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": [call]}
    if reasoning is not None:
        assistant["reasoning_content"] = reasoning
    return [
        {"role": "user", "content": "Sum"},
        assistant,
        {"role": "tool", "tool_call_id": tool_call_id, "content": "3"},
    ]


@pytest.mark.parametrize("reasoning", [None, ""])
async def test_tool_call_message_without_reasoning_content_is_rejected(
    http: httpx.AsyncClient, reasoning: str | None
) -> None:
    response = await http.post("/chat/completions", json=chat(messages=_tool_turn(reasoning)))

    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "message": "thinking is enabled but reasoning_content is missing in assistant tool call "
        "message at index 1",
    }


@pytest.mark.parametrize(
    "extra",
    [
        {"messages": _tool_turn("Thought.", tool_call_id="functions.add:0")},
        {"tool_choice": "required", "tools": [ADD_TOOL]},
        {"tool_choice": {"type": "function", "function": {"name": "add"}}, "tools": [ADD_TOOL]},
        {"thinking": True},
    ],
    ids=["tool_call_id_mismatch", "tool_choice_required", "tool_choice_named", "thinking_true"],
)
async def test_moonshot_request_rules_answer_400(
    http: httpx.AsyncClient, extra: dict[str, Any]
) -> None:
    response = await http.post("/chat/completions", json=chat("Hi", **extra))

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- pacing and disconnects ---------------------------------------------------------------------


async def test_rate_directive_paces_tokens(http: httpx.AsyncClient) -> None:
    started = time.monotonic()
    chunks = data(await stream_lines(http, chat("Hi !rate:100 !think:10 !words:11")))

    assert len(chunks) > 21
    assert time.monotonic() - started >= 0.15  # 21 tokens due at 0, 10 ms, …, 200 ms


async def test_hang_stream_stops_when_the_client_disconnects(
    server: OfflineModelServer, http: httpx.AsyncClient
) -> None:
    async with http.stream("POST", "/chat/completions", json=chat("Wait !hang !think:2")) as r:
        received = []
        async for line in r.aiter_lines():
            received.append(line)
            if len(data(received)) == 3:  # the role chunk and two reasoning tokens
                break
        assert server.active_streams == 1
    await server.wait_for_disconnects(1, timeout=3)

    assert server.active_streams == 0
    assert server.disconnects == 1


async def test_stop_ends_open_streams(server: OfflineModelServer, http: httpx.AsyncClient) -> None:
    async with http.stream("POST", "/chat/completions", json=chat("Wait !hang")) as response:
        lines = response.aiter_lines()
        await anext(lines)
        await asyncio.wait_for(server.stop(), 2)
        with pytest.raises(httpx.RemoteProtocolError):
            async for _ in lines:
                pass

    assert server.active_streams == 0


def test_threaded_server_serves_sync_clients_and_sees_disconnects() -> None:
    with start_in_thread(rate=0) as threaded:
        with httpx.Client(base_url=threaded.base_url, timeout=5) as client:
            answer = client.post(
                "/chat/completions", json=chat("Hi !think:1 !words:3", stream=False)
            )
            with client.stream("POST", "/chat/completions", json=chat("Wait !hang")) as response:
                next(response.iter_lines())
        threaded.wait_for_disconnects(1, timeout=3)

        assert answer.json()["usage"]["completion_tokens"] == 4
        assert len(threaded.requests) == 2
        assert threaded.server.disconnects == 1


def test_command_line_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "agents.offline_server", "--port", "0", "--rate", "0"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("offline model server listening on http://127.0.0.1:")
            base_url = line.split()[-1]
            assert httpx.get(f"{base_url}/models", timeout=5).status_code == 200
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
        finally:
            process.kill()
