"""The provider client streams steps over real HTTP, retries only before output, and stops cleanly.

The provider side is a small HTTP/1.1 server on 127.0.0.1 that plays scripted replies, so the
openai SDK, httpx and our SSE handling all run for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agents.client import ProviderClient, ProviderConfig, StepResult
from agents.errors import ErrorKind, ProviderError
from agents.stream import ContentDelta, MalformedLine, ReasoningDelta, StreamEvent, Usage

# The project's read-only shared folder sits beside the checkout (GLASSBOX_SHARED_DIR elsewhere).
SHARED = Path(
    os.environ.get("GLASSBOX_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared"
)
RECORDED = SHARED / "fixtures" / "kimi-recorded"
CHUTES_REASONING = "openrouter-chutes-kimi-k2.5-reasoning-then-tool-call-stream.vcr.yaml"
MESSAGES = [{"role": "user", "content": "What is 2+2?"}]


@dataclass
class Reply:
    """One scripted HTTP response."""

    status: int = 200
    # For 200: the SSE body, each piece sent as one HTTP chunk. Otherwise: the whole body.
    pieces: list[bytes] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    cut: bool = False  # drop the connection after the pieces, leaving the body unfinished
    hold: bool = False  # after the pieces, keep the body open until the client goes away
    silent: bool = False  # never answer at all


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeProvider:
    """An OpenAI-compatible endpoint that plays `replies` in order and records requests."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[Seen] = []
        self.connections = 0
        self.client_gone = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            while await self._serve_one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append(Seen(request_line.split()[1], headers, json.loads(body)))
        reply = self.replies.pop(0) if self.replies else Reply(599, [b"no reply scripted"])

        if reply.silent:
            await self._wait_for_client_to_leave(reader)
            return False
        if reply.status != 200:
            payload = b"".join(reply.pieces)
            extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers.items())
            writer.write(
                f"HTTP/1.1 {reply.status} Error\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n{extra}\r\n".encode()
                + payload
            )
            await writer.drain()
            return True

        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for piece in reply.pieces:
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
        if reply.cut:
            return False
        if reply.hold:
            await self._wait_for_client_to_leave(reader)
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def _wait_for_client_to_leave(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(1024):
            pass
        self.client_gone.set()


def sse(*chunks: dict[str, Any] | str) -> list[bytes]:
    """SSE pieces: dicts become `data:` events, strings are sent as they are."""
    return [
        item.encode() if isinstance(item, str) else f"data: {json.dumps(item)}\n\n".encode()
        for item in chunks
    ]


def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, **extra}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice]}


def error_reply(status: int, error_type: str, message: str, **headers: str) -> Reply:
    body = json.dumps({"error": {"type": error_type, "message": message}}).encode()
    return Reply(status, [body], headers=headers)


USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19, "cached_tokens": 8}
ANSWER = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning_content": "Easy: "}),
    chunk({"reasoning_content": "add."}),
    chunk({"content": "4"}),
    chunk({}, "stop", usage=USAGE),
    {"id": "chatcmpl-1", "choices": [], "usage": USAGE},
    "data: [DONE]\n\n",
)


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    server = FakeProvider()
    await server.start()
    yield server
    await server.stop()


def make_client(provider: FakeProvider, **config: Any) -> ProviderClient:
    settings: dict[str, Any] = {"timeout": 5.0, "max_retries": 3, **config}
    return ProviderClient(
        ProviderConfig(
            base_url=provider.base_url, api_key="sk-test", model="kimi-k2-thinking", **settings
        ),
        # Tiny backoff keeps retry tests fast; the policy is the same.
        backoff_base=0.001,
        backoff_cap=0.005,
    )


@pytest.fixture
async def client(provider: FakeProvider) -> AsyncIterator[ProviderClient]:
    client = make_client(provider)
    yield client
    await client.aclose()


async def collect(
    client: ProviderClient, tools: list[dict[str, Any]] | None = None
) -> tuple[list[StreamEvent], StepResult]:
    items = [item async for item in client.stream_step(MESSAGES, tools=tools)]
    *events, result = items
    assert isinstance(result, StepResult)
    assert not any(isinstance(event, StepResult) for event in events)
    return [event for event in events if not isinstance(event, StepResult)], result


async def test_a_step_streams_events_then_exactly_one_result(
    provider: FakeProvider, client: ProviderClient
) -> None:
    provider.replies = [Reply(pieces=ANSWER)]

    events, result = await collect(client)

    assert events == [ReasoningDelta("Easy: "), ReasoningDelta("add."), ContentDelta("4")]
    assert result == StepResult(
        finish_reason="stop",
        usage=Usage(prompt_tokens=12, cached_tokens=8, completion_tokens=7, total_tokens=19),
        tool_calls=[],
        malformed_lines=0,
    )


async def test_the_request_follows_the_kimi_rules(
    provider: FakeProvider, client: ProviderClient
) -> None:
    provider.replies = [Reply(pieces=ANSWER)]

    await collect(client)

    [seen] = provider.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.body == {
        "model": "kimi-k2-thinking",
        "messages": MESSAGES,
        "temperature": 1.0,
        "max_tokens": 32000,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_tools_are_sent_without_a_forced_tool_choice(
    provider: FakeProvider, client: ProviderClient
) -> None:
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    provider.replies = [Reply(pieces=ANSWER)]

    await collect(client, tools=tools)

    body = provider.requests[0].body
    assert body["tools"] == tools
    assert "tool_choice" not in body
    assert "thinking" not in body


async def test_a_recorded_stream_replays_through_http_in_odd_sized_pieces(
    provider: FakeProvider, client: ProviderClient
) -> None:
    cassette = (RECORDED / CHUTES_REASONING).read_text()
    block = cassette.split("body: |+\n", 1)[1].split("\n    headers:", 1)[0]
    body = "\n".join(line.removeprefix("      ") for line in block.splitlines()).encode() + b"\n"
    # Cut the body regardless of line ends so lines span HTTP chunks.
    provider.replies = [Reply(pieces=[body[i : i + 97] for i in range(0, len(body), 97)])]

    events, result = await collect(client)

    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert reasoning.startswith(" The user is asking for the weather in Florence")
    assert result.finish_reason == "tool_calls"
    assert [(call.id, call.name, call.arguments) for call in result.tool_calls] == [
        ("functions.weather:0", "weather", '{"location": "Florence,Italy"}')
    ]
    assert result.usage is not None
    assert result.usage.reasoning_tokens == 66
    assert result.malformed_lines == 0


async def test_comments_and_a_malformed_line_are_skipped_and_counted(
    provider: FakeProvider, client: ProviderClient
) -> None:
    provider.replies = [
        Reply(
            pieces=sse(
                ": OPENROUTER PROCESSING\n\n",
                chunk({"content": "a"}),
                'data: {"choices": [{"delta"\n\n',
                chunk({"content": "b"}, "stop"),
                "data: [DONE]\n\n",
            )
        )
    ]

    events, result = await collect(client)

    assert [type(event) for event in events] == [ContentDelta, MalformedLine, ContentDelta]
    assert result.malformed_lines == 1
    assert result.finish_reason == "stop"


async def test_a_stream_with_finish_reason_but_no_done_marker_is_complete(
    provider: FakeProvider, client: ProviderClient
) -> None:
    provider.replies = [Reply(pieces=sse(chunk({"content": "ok"}, "stop")))]

    _, result = await collect(client)

    assert result.finish_reason == "stop"


async def test_steps_reuse_one_connection(provider: FakeProvider, client: ProviderClient) -> None:
    provider.replies = [Reply(pieces=ANSWER), Reply(pieces=ANSWER)]

    await collect(client)
    await collect(client)

    assert len(provider.requests) == 2
    assert provider.connections == 1


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (error_reply(400, "invalid_request_error", "Invalid request: bad tools"), "bad_request"),
        (
            error_reply(400, "invalid_request_error", "Your request exceeded model token limit"),
            "context_too_long",
        ),
        (error_reply(400, "content_filter", "considered high risk"), "content_filter"),
        (error_reply(401, "invalid_authentication_error", "Invalid Authentication"), "auth"),
        (error_reply(403, "permission_denied_error", "no balance"), "permission"),
        (error_reply(404, "resource_not_found_error", "Not found the model"), "not_found"),
        (error_reply(429, "engine_overloaded_error", "overloaded"), "overloaded"),
        (error_reply(429, "rate_limit_reached_error", "max RPM"), "rate_limited"),
        (error_reply(429, "exceeded_current_quota_error", "quota"), "quota"),
        (error_reply(500, "server_error", "boom"), "server"),
        (error_reply(504, "timeout", "took too long"), "timeout"),
        (Reply(502, [b"<html>Bad Gateway</html>"]), "server"),
    ],
)
async def test_http_errors_surface_classified(
    provider: FakeProvider, reply: Reply, kind: str
) -> None:
    provider.replies = [reply]
    client = make_client(provider, max_retries=0)

    with pytest.raises(ProviderError) as raised:
        await collect(client)
    await client.aclose()

    assert raised.value.kind is ErrorKind(kind)
    assert raised.value.status == reply.status
    assert len(provider.requests) == 1


@pytest.mark.parametrize(
    "failure",
    [
        error_reply(429, "engine_overloaded_error", "The engine is currently overloaded"),
        error_reply(429, "rate_limit_reached_error", "please try again after 1 seconds"),
        error_reply(429, "rate_limit_reached_error", "slow down", **{"Retry-After": "0"}),
        error_reply(500, "server_error", "boom"),
        error_reply(504, "timeout", "took too long"),
        Reply(pieces=[]),  # a 200 with an empty body: nothing shown, safe to retry
        Reply(pieces=sse({"error": {"type": "engine_overloaded_error", "message": "busy"}})),
    ],
    ids=["overloaded", "rate-limit-hint", "retry-after", "500", "504", "empty-200", "in-stream"],
)
async def test_transient_failures_before_output_are_retried(
    provider: FakeProvider, client: ProviderClient, failure: Reply
) -> None:
    provider.replies = [failure, Reply(pieces=ANSWER)]

    events, result = await collect(client)

    assert len(provider.requests) == 2
    assert result.finish_reason == "stop"
    assert events[0] == ReasoningDelta("Easy: ")


async def test_retries_stop_after_max_retries(provider: FakeProvider) -> None:
    provider.replies = [error_reply(500, "server_error", "boom") for _ in range(5)]
    client = make_client(provider, max_retries=2)

    with pytest.raises(ProviderError) as raised:
        await collect(client)
    await client.aclose()

    assert raised.value.kind is ErrorKind.SERVER
    assert len(provider.requests) == 3


@pytest.mark.parametrize(
    "failure",
    [
        error_reply(401, "invalid_authentication_error", "Invalid Authentication"),
        error_reply(429, "exceeded_current_quota_error", "out of quota"),
        error_reply(400, "invalid_request_error", "bad"),
        Reply(pieces=sse({"error": {"message": "unknown failure"}})),
    ],
    ids=["auth", "quota", "bad-request", "unknown-in-stream"],
)
async def test_permanent_failures_are_not_retried(
    provider: FakeProvider, client: ProviderClient, failure: Reply
) -> None:
    provider.replies = [failure, Reply(pieces=ANSWER)]

    with pytest.raises(ProviderError) as raised:
        await collect(client)

    assert not raised.value.retryable
    assert len(provider.requests) == 1


async def test_a_stream_cut_after_output_raises_without_retry(
    provider: FakeProvider, client: ProviderClient
) -> None:
    provider.replies = [Reply(pieces=sse(chunk({"content": "Half an ans"})), cut=True)]
    provider.replies.append(Reply(pieces=ANSWER))
    received: list[StreamEvent | StepResult] = []

    with pytest.raises(ProviderError) as raised:
        async for item in client.stream_step(MESSAGES):
            received.append(item)

    assert received == [ContentDelta("Half an ans")]
    assert raised.value.kind is ErrorKind.STREAM
    assert len(provider.requests) == 1


async def test_a_stream_cut_after_its_finish_reason_still_completes(
    provider: FakeProvider, client: ProviderClient
) -> None:
    provider.replies = [Reply(pieces=sse(chunk({"content": "Done."}, "stop")), cut=True)]

    events, result = await collect(client)

    assert events == [ContentDelta("Done.")]
    assert result.finish_reason == "stop"
    assert len(provider.requests) == 1


async def test_a_stream_that_ends_early_after_output_is_an_error(
    provider: FakeProvider, client: ProviderClient
) -> None:
    provider.replies = [
        Reply(pieces=sse(chunk({"reasoning_content": "Hmm"}))),
        Reply(pieces=ANSWER),
    ]

    with pytest.raises(ProviderError) as raised:
        await collect(client)

    assert raised.value.kind is ErrorKind.STREAM
    assert raised.value.message == "The stream ended early"
    assert len(provider.requests) == 1


async def test_an_error_object_after_output_is_not_retried(
    provider: FakeProvider, client: ProviderClient
) -> None:
    provider.replies = [
        Reply(
            pieces=sse(
                chunk({"content": "Par"}),
                {"error": {"type": "engine_overloaded_error", "message": "busy"}},
            )
        ),
        Reply(pieces=ANSWER),
    ]

    with pytest.raises(ProviderError) as raised:
        await collect(client)

    assert raised.value.kind is ErrorKind.OVERLOADED
    assert len(provider.requests) == 1


async def test_a_stream_that_stalls_times_out(provider: FakeProvider) -> None:
    provider.replies = [Reply(pieces=sse(chunk({"content": "I"})), hold=True)]
    client = make_client(provider, timeout=0.2)

    with pytest.raises(ProviderError) as raised:
        await collect(client)
    await client.aclose()

    assert raised.value.kind is ErrorKind.TIMEOUT
    assert len(provider.requests) == 1
    await asyncio.wait_for(provider.client_gone.wait(), 5)


async def test_a_provider_that_never_answers_times_out(provider: FakeProvider) -> None:
    provider.replies = [Reply(silent=True)]
    client = make_client(provider, timeout=0.2, max_retries=0)

    with pytest.raises(ProviderError) as raised:
        await collect(client)
    await client.aclose()

    assert raised.value.kind is ErrorKind.TIMEOUT
    assert raised.value.retryable


async def test_an_unreachable_provider_is_reported() -> None:
    # Bind a port and release it so that nothing listens there.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = ProviderClient(
        ProviderConfig(base_url=f"http://127.0.0.1:{port}/v1", api_key="", model="m", max_retries=0)
    )

    with pytest.raises(ProviderError) as raised:
        await collect(client)
    await client.aclose()

    assert raised.value.kind is ErrorKind.UNREACHABLE
    assert "Could not reach the model provider" in raised.value.user_message


async def test_cancelling_the_task_closes_the_http_stream(
    provider: FakeProvider, client: ProviderClient
) -> None:
    provider.replies = [Reply(pieces=sse(chunk({"reasoning_content": "Thinking"})), hold=True)]
    first_event = asyncio.Event()

    async def consume() -> None:
        async for _ in client.stream_step(MESSAGES):
            first_event.set()

    task = asyncio.create_task(consume())
    await first_event.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(provider.client_gone.wait(), 5)


async def test_leaving_the_stream_early_closes_the_http_stream(
    provider: FakeProvider, client: ProviderClient
) -> None:
    provider.replies = [Reply(pieces=sse(chunk({"content": "Hello"})), hold=True)]

    async with contextlib.aclosing(client.stream_step(MESSAGES)) as stream:
        async for item in stream:
            assert item == ContentDelta("Hello")
            break

    await asyncio.wait_for(provider.client_gone.wait(), 5)
