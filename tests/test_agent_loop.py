"""The agent loop with tools executed by a real Celery worker (embedded broker or Redis)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from chat.models import MessageStatus, ToolCall, ToolSetting
from chat.streaming import TurnSession
from tests.helpers import FrameRecorder, make_turn, reload_message
from tests.procs import celery_worker, child_database_url

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def worker(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    env = {"DATABASE_URL": child_database_url()}
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    with celery_worker(env) as process:
        yield process


@pytest.fixture
def echo_on(db: Any) -> None:
    ToolSetting.objects.update_or_create(name="echo", defaults={"enabled": True})


@sync_to_async
def calls_of(message_id: Any) -> list[ToolCall]:
    return list(ToolCall.objects.filter(message_id=message_id).order_by("step_index", "index"))


async def run_turn_text(owner: Any, text: str) -> tuple[Any, list[str]]:
    conversation, assistant = await make_turn(owner, text)
    async with FrameRecorder(conversation) as recorder:
        await asyncio.wait_for(TurnSession(assistant.id).run(), 600)
        frames = await recorder.until_final(timeout=30)
    return await reload_message(assistant.id), frames


def assert_replayed_correctly(requests: list[dict[str, Any]]) -> int:
    """Every tool-calling assistant message carries its reasoning; every id is echoed."""
    checked = 0
    for body in requests:
        issued: set[str] = set()
        for message in body["messages"]:
            if message["role"] == "assistant" and message.get("tool_calls"):
                assert message.get("reasoning_content"), "reasoning_content must be resent"
                issued.update(call["id"] for call in message["tool_calls"])
                checked += 1
            if message["role"] == "tool":
                assert message["tool_call_id"] in issued
        assert body.get("tool_choice") in (None, "auto", "none")
    return checked


async def test_parallel_tool_calls_run_on_the_worker_and_are_replayed(
    provider: Any, owner: Any, worker: Any, echo_on: None
) -> None:
    message, frames = await run_turn_text(
        owner, 'Echo twice !tool:echo:{"text":"alpha"} !tool:echo:{"text":"beta"}'
    )
    assert message.status == MessageStatus.COMPLETE, message.error_message
    calls = await calls_of(message.id)
    assert [c.call_id for c in calls] == ["echo:0", "echo:1"]
    assert [c.status for c in calls] == ["done", "done"]
    assert [c.result for c in calls] == ["alpha", "beta"]
    assert all(c.worker and c.started_at and c.finished_at for c in calls)
    follow_up = provider.requests[-1]
    tool_messages = [m for m in follow_up["messages"] if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in tool_messages] == [
        ("echo:0", "alpha"),
        ("echo:1", "beta"),
    ]
    assert assert_replayed_correctly(provider.requests) == 1
    assert any('class="tool-card status-done"' in f for f in frames)
    assert any('class="tool-card status-queued"' in f or "status-running" in f for f in frames)


async def test_vllm_style_ids_are_echoed_byte_for_byte(
    provider: Any, owner: Any, worker: Any, echo_on: None
) -> None:
    message, _ = await run_turn_text(owner, 'Echo !ids:vllm !tool:echo:{"text":"x"}')
    assert message.status == MessageStatus.COMPLETE, message.error_message
    (call,) = await calls_of(message.id)
    assert call.call_id == "functions.echo:0"
    tool_message = next(m for m in provider.requests[-1]["messages"] if m["role"] == "tool")
    assert tool_message["tool_call_id"] == "functions.echo:0"


async def test_invalid_json_arguments_go_back_to_the_model_and_the_loop_goes_on(
    provider: Any, owner: Any, worker: Any, echo_on: None
) -> None:
    message, _ = await run_turn_text(owner, 'Broken !badjson !tool:echo:{"text":"x"}')
    assert message.status == MessageStatus.COMPLETE, message.error_message
    (call,) = await calls_of(message.id)
    assert call.status == "failed"
    assert "not valid JSON" in call.result
    tool_message = next(m for m in provider.requests[-1]["messages"] if m["role"] == "tool")
    assert "not valid JSON" in tool_message["content"]


async def test_unknown_tool_is_explained_to_the_model(
    provider: Any, owner: Any, worker: Any, echo_on: None
) -> None:
    message, _ = await run_turn_text(owner, "Call something odd !unknown_tool")
    assert message.status == MessageStatus.COMPLETE, message.error_message
    (call,) = await calls_of(message.id)
    assert call.name == "does_not_exist" and call.status == "failed"
    assert "Unknown tool 'does_not_exist'" in call.result
    assert "echo" in call.result


async def test_a_300_step_loop_replays_every_step(
    provider: Any, owner: Any, worker: Any, echo_on: None
) -> None:
    message, _ = await run_turn_text(owner, 'Loop !loop:300 !tool:echo:{"text":"step"} !think:5')
    assert message.status == MessageStatus.COMPLETE, message.error_message
    calls = await calls_of(message.id)
    assert len(calls) == 300 and all(c.status == "done" for c in calls)
    last = provider.requests[-1]
    assert sum(1 for m in last["messages"] if m["role"] == "tool") == 300
    assert assert_replayed_correctly([last]) == 300
    steps = await sync_to_async(lambda: message.steps.count())()
    assert steps == 301


async def test_step_cap_ends_the_turn_visibly(
    provider: Any, owner: Any, worker: Any, echo_on: None, settings: Any
) -> None:
    settings.GLASSBOX_MAX_STEPS = 3
    message, frames = await run_turn_text(owner, 'Loop !loop:10 !tool:echo:{"text":"s"}')
    assert message.status == MessageStatus.STEP_LIMIT
    assert "Step limit reached" in message.error_message
    assert "Step limit reached" in frames[-1]
    assert len(await calls_of(message.id)) == 3


def sandbox_ok() -> bool:
    from agents.sandbox import isolation_problem

    return isolation_problem() is None


needs_sandbox = pytest.mark.skipif(
    not sandbox_ok() and os.environ.get("CI") != "true", reason="no sandbox isolation here"
)


@needs_sandbox
async def test_worker_killed_mid_call_retries_once_and_the_turn_finishes(
    provider: Any, owner: Any, worker: Any
) -> None:
    code = json.dumps({"code": "import time\ntime.sleep(1.5)\nprint('slept')"})
    conversation, assistant = await make_turn(owner, f"Sleep !tool:python:{code}")
    task = asyncio.create_task(TurnSession(assistant.id).run())
    for _ in range(600):
        calls = await calls_of(assistant.id)
        if calls and calls[0].status == "running":
            break
        await asyncio.sleep(0.02)
    (call,) = calls
    assert call.status == "running"
    pid = int(call.worker.rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)  # the prefork child running the tool
    await asyncio.wait_for(task, 120)
    message = await reload_message(assistant.id)
    (call,) = await calls_of(assistant.id)
    assert message.status == MessageStatus.COMPLETE, message.error_message
    assert call.attempts == 2 or call.status == "failed"
    assert call.status in ("done", "failed")
    if call.status == "done":
        assert "slept" in call.result
    assert worker.poll() is None, "the worker itself lives on"


@needs_sandbox
async def test_stop_during_a_tool_call_cancels_it(provider: Any, owner: Any, worker: Any) -> None:
    code = json.dumps({"code": "import time\ntime.sleep(20)"})
    conversation, assistant = await make_turn(owner, f"Sleep long !tool:python:{code}")
    session = TurnSession(assistant.id)
    task = asyncio.create_task(session.run())
    for _ in range(600):
        calls = await calls_of(assistant.id)
        if calls and calls[0].status in ("queued", "running"):
            break
        await asyncio.sleep(0.02)
    session.request_stop()
    await asyncio.wait_for(task, 30)
    message = await reload_message(assistant.id)
    (call,) = await calls_of(assistant.id)
    assert message.status == MessageStatus.STOPPED
    assert call.status == "cancelled"
