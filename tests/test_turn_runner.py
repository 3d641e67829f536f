"""The turn runner against the offline model server over real HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from chat.models import MessageStatus, Step
from chat.rendering import render_markdown
from chat.streaming import TurnSession
from tests.helpers import BrowserModel, FrameRecorder, header, make_turn, reload_message

pytestmark = [pytest.mark.django_db(transaction=True)]


@sync_to_async
def steps_of(message_id: Any) -> list[Step]:
    return list(Step.objects.filter(message_id=message_id).order_by("index"))


async def run_and_record(conversation: Any, message_id: Any) -> list[str]:
    async with FrameRecorder(conversation) as recorder:
        await TurnSession(message_id).run()
        return await recorder.until_final()


async def test_turn_streams_reasoning_then_answer_and_stores_both(
    provider: Any, owner: Any
) -> None:
    conversation, assistant = await make_turn(owner, "Why is the sky blue?")
    frames = await run_and_record(conversation, assistant.id)

    message = await reload_message(assistant.id)
    assert message.status == MessageStatus.COMPLETE
    assert "sky blue" in message.text.lower() or "sky" in message.text.lower()
    assert message.completion_tokens > 0 and message.prompt_tokens > 0
    assert message.reasoning_tokens > 0
    (step,) = await steps_of(assistant.id)
    assert "sky" in step.reasoning.lower()
    assert step.first_reasoning_at and step.reasoning_ended_at and step.finished_at
    assert step.started_at <= step.first_reasoning_at <= step.reasoning_ended_at <= step.finished_at
    assert step.finish_reason == "stop"

    seqs = [header(f)[1] for f in frames]
    assert seqs == list(range(len(frames))), "one frame per seq, in order, from 0"
    assert message.seq == seqs[-1]
    page = BrowserModel(message.short_id)
    for frame in frames:
        page.apply(frame)
    assert page.duplicates == page.gaps == 0
    assert page.reasoning == step.reasoning
    assert page.answer_html == render_markdown(message.text)
    assert page.tail == ""
    assert "Thought for" in frames[-1]


async def test_frames_send_each_piece_of_text_once(provider: Any, owner: Any) -> None:
    conversation, assistant = await make_turn(owner, "Write at length !words:3000 !think:400")
    frames = await run_and_record(conversation, assistant.id)
    message = await reload_message(assistant.id)
    (step,) = await steps_of(assistant.id)
    text_bytes = len((message.text + step.reasoning).encode())
    wire_bytes = sum(len(f.encode()) for f in frames)
    # Text once as deltas, finished blocks once as HTML, and small per-frame headers.
    assert wire_bytes < 3 * text_bytes


async def test_malformed_stream_line_is_skipped_and_the_answer_kept(
    provider: Any, owner: Any
) -> None:
    conversation, assistant = await make_turn(owner, "Tell me about rivers !malformed !comments")
    await run_and_record(conversation, assistant.id)
    message = await reload_message(assistant.id)
    assert message.status == MessageStatus.COMPLETE
    assert "rivers" in message.text.lower()


@pytest.mark.parametrize(
    ("directive", "kind", "words"),
    [
        ("!error:auth", "auth", "API key"),
        ("!error:quota", "quota", "quota"),
        ("!error:invalid_request", "bad_request", ""),
        ("!error:context_length", "context_too_long", "too long"),
        ("!error:content_filter", "content_filter", "refused"),
        ("!error:not_found", "not_found", ""),
    ],
)
async def test_provider_errors_fail_the_turn_with_a_clear_reason(
    provider: Any, owner: Any, directive: str, kind: str, words: str
) -> None:
    conversation, assistant = await make_turn(owner, f"Hello {directive}")
    frames = await run_and_record(conversation, assistant.id)
    message = await reload_message(assistant.id)
    assert message.status == MessageStatus.FAILED
    assert message.error_kind == kind
    assert message.error_message
    assert words.lower() in message.error_message.lower()
    assert "Retry" in frames[-1]
    assert len(provider.requests) == 1, "errors that retrying cannot fix are not retried"


async def test_overload_before_output_is_retried_and_then_succeeds(
    provider: Any, owner: Any
) -> None:
    conversation, assistant = await make_turn(owner, "Busy? !error:overloaded !fail_times:1")
    await run_and_record(conversation, assistant.id)
    message = await reload_message(assistant.id)
    assert message.status == MessageStatus.COMPLETE
    assert len(provider.requests) == 2


async def test_error_after_output_keeps_the_partial_text(provider: Any, owner: Any) -> None:
    conversation, assistant = await make_turn(owner, "Start then break !error_midstream")
    await run_and_record(conversation, assistant.id)
    message = await reload_message(assistant.id)
    (step,) = await steps_of(assistant.id)
    assert message.status == MessageStatus.FAILED
    assert step.reasoning, "the reasoning that streamed is kept"
    assert len(provider.requests) == 1, "never retried after output"


async def test_unreachable_provider_fails_clearly(provider: Any, owner: Any, settings: Any) -> None:
    from chat.streaming import provider_client

    settings.GLASSBOX_BASE_URL = "http://127.0.0.1:9/v1"
    settings.GLASSBOX_MAX_RETRIES = 0
    provider_client.cache_clear()
    conversation, assistant = await make_turn(owner, "Anyone there?")
    await run_and_record(conversation, assistant.id)
    message = await reload_message(assistant.id)
    assert message.status == MessageStatus.FAILED
    assert message.error_kind == "unreachable"


async def test_stop_cancels_upstream_and_keeps_the_partial(provider: Any, owner: Any) -> None:
    conversation, assistant = await make_turn(owner, "Think forever !hang")
    disconnects_before = provider.server.disconnects
    async with FrameRecorder(conversation) as recorder:
        session = TurnSession(assistant.id)
        task = asyncio.create_task(session.run())
        # Wait for reasoning to reach a browser, then stop.
        await recorder.wait_for(f'<span id="r-{assistant.id.hex[:12]}-0" hx-swap-oob="beforeend">')
        session.request_stop()
        await asyncio.wait_for(task, 10)
        await recorder.until_final()
    message = await reload_message(assistant.id)
    (step,) = await steps_of(assistant.id)
    assert message.status == MessageStatus.STOPPED
    assert step.reasoning
    for _ in range(100):
        if provider.server.disconnects > disconnects_before:
            break
        await asyncio.sleep(0.02)
    assert provider.server.disconnects > disconnects_before, "the upstream request was closed"


async def test_turn_requests_follow_the_protocol(provider: Any, owner: Any) -> None:
    conversation, first = await make_turn(owner, "First question")
    await run_and_record(conversation, first.id)
    conversation, second = await make_turn(owner, "Second question", conversation)
    await run_and_record(conversation, second.id)
    body = provider.requests[-1]
    assert body["stream"] is True
    assert body["model"] == "kimi-k2-thinking"
    assert body["temperature"] == 1.0
    assert body["max_tokens"] == 32000
    assert "thinking" not in body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][-1]["content"] == "Second question"
