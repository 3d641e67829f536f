"""The turn runner: runs one assistant turn in this process and streams it to every viewer.

It is the `TurnSink` of `agents.turn.run_turn`. Incoming events become *ops*; a flusher turns
pending ops into one HTML frame at most every `GLASSBOX_COALESCE_MS` (sooner past
`GLASSBOX_COALESCE_CHARS`), applies them to the *applied state*, and publishes the frame with
the next sequence number. Snapshots and checkpoints always show the applied state with its
`seq`, so "snapshot at seq S, then frames S+1…" never shows text twice or misses any.
See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.safestring import mark_safe

from agents.client import ProviderClient, ProviderConfig, StepResult
from agents.errors import ProviderError
from agents.stream import ContentDelta, MalformedLine, ReasoningDelta, StreamEvent
from agents.tools import current_config, offered_tools
from agents.turn import PreparedCall, StepLimitReached, run_turn
from chat import events, toolruns
from chat.actions import TurnStart, load_turn
from chat.models import Message, MessageStatus, Step, ToolCall
from chat.presentation import (
    MessageView,
    StepView,
    escape_text,
    render_assistant,
    render_footer,
    render_step,
    render_step_head,
    render_thinking_head,
    render_tool_card,
)
from chat.rendering import IncrementalMarkdown

logger = logging.getLogger(__name__)

_RUNNING: set[asyncio.Task[None]] = set()
_DB_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="turn-db")


@cache
def provider_client() -> ProviderClient:
    """One client per process, so connections to the provider are pooled."""
    offline = settings.GLASSBOX_PROVIDER == "offline"
    return ProviderClient(
        ProviderConfig(
            base_url=settings.GLASSBOX_BASE_URL,
            api_key=settings.GLASSBOX_API_KEY or "offline",
            model=settings.GLASSBOX_MODEL,
            temperature=settings.GLASSBOX_TEMPERATURE,
            max_tokens=settings.GLASSBOX_MAX_TOKENS,
            timeout=float(settings.GLASSBOX_REQUEST_TIMEOUT),
            max_retries=settings.GLASSBOX_MAX_RETRIES,
            provider=settings.GLASSBOX_PROVIDER,
            label="offline simulator" if offline else settings.GLASSBOX_PROVIDER,
        )
    )


def start_turn(message_id: uuid.UUID) -> asyncio.Task[None]:
    """Run the turn of `message_id` in this process's event loop, detached from any request."""
    task = asyncio.get_running_loop().create_task(TurnSession(message_id).run())
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    return task


@dataclass
class _Op:
    """One pending change: a new step, reasoning or answer text, a clock change, a tool card."""

    kind: str  # "step" | "reasoning" | "content" | "head" | "tool"
    text: str = ""
    step: int = 0
    call: ToolCall | None = None


class TurnSession:
    """Everything one running turn holds in memory. Owned by one task; no locks needed."""

    def __init__(self, message_id: uuid.UUID) -> None:
        self.message_id = message_id
        self.short = message_id.hex[:12]
        self.layer: BaseChannelLayer = get_channel_layer()
        self.channel = ""
        self.group = ""
        self.user_html = ""
        # Applied state: exactly what frames 0..seq have shown.
        self.view = MessageView(id=message_id, status=MessageStatus.STREAMING, seq=0)
        self.markdown = IncrementalMarkdown()
        self.blocks: list[str] = []
        self.answer_text: list[str] = []
        # Pending state, not yet in a frame.
        self.ops: list[_Op] = []
        self.pending_chars = 0
        self.dirty = asyncio.Event()
        self.urgent = asyncio.Event()
        self.last_flush = 0.0
        self.flush_lock = asyncio.Lock()
        self.stop_requested = False
        self.stream_task: asyncio.Task[Any] | None = None
        self.steps: dict[int, StepView] = {}
        self.done = asyncio.Event()
        self.finish_reason = ""
        self.malformed_lines = 0
        self.tool_changed = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        self.channel = await self.layer.new_channel("turn.")
        self.view.provider = settings.GLASSBOX_PROVIDER
        self.view.model = settings.GLASSBOX_MODEL
        try:
            turn = await self._db(self._start)
        except Message.DoesNotExist:
            logger.warning("turn %s vanished before it started", self.message_id)
            return
        self.group = turn.group
        self.user_html = turn.user_html
        self.view.conversation_id = turn.conversation_id
        helpers = [
            asyncio.create_task(self._listen()),
            asyncio.create_task(self._flusher()),
            asyncio.create_task(self._checkpointer()),
        ]
        await events.publish_frame(self.layer, self.group, self.short, 0, self._snapshot_html())
        status, error_kind, error_message = MessageStatus.COMPLETE, "", ""
        try:
            self.stream_task = asyncio.create_task(
                run_turn(
                    provider_client(),
                    turn.history,
                    self,
                    tools=offered_tools(turn.tools),
                    tool_config=current_config(),
                    max_steps=settings.GLASSBOX_MAX_STEPS,
                )
            )
            await self.stream_task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # This process is going away: keep what streamed, say so, then stop.
                status, error_message = MessageStatus.INTERRUPTED, "The server stopped."
                await asyncio.shield(self._finish(status, "", error_message, helpers))
                raise
            status = MessageStatus.STOPPED
        except ProviderError as exc:
            status, error_kind, error_message = MessageStatus.FAILED, exc.kind, exc.user_message
        except StepLimitReached as exc:
            status, error_kind = MessageStatus.STEP_LIMIT, "step_limit"
            error_message = f"Step limit reached: {exc} Retry to let it go on from the start."
        except Exception:
            logger.exception("turn %s failed", self.message_id)
            status, error_kind = MessageStatus.FAILED, "internal"
            error_message = "Glassbox hit an internal error while running this turn."
        await self._finish(status, error_kind, error_message, helpers)

    async def _finish(
        self, status: str, error_kind: str, error_message: str, helpers: list[asyncio.Task[Any]]
    ) -> None:
        listener, flusher, checkpointer = helpers
        self.done.set()
        self.dirty.set()
        # Both end by themselves once `done` is set: a checkpoint in progress lands before the
        # final write, and the flusher sends what is pending as the frame before the last.
        await asyncio.gather(flusher, checkpointer)
        now = timezone.now()
        for step in self.steps.values():
            step.finished_at = step.finished_at or now
            step.reasoning_ended_at = step.reasoning_ended_at or (
                step.finished_at if step.reasoning else None
            )
        self.view.status = status
        self.view.error_kind = error_kind
        self.view.error_message = error_message
        async with self.flush_lock:
            frame = self._take_frame(final=True)
            await self._db(self._save_final)
            await events.publish_frame(self.layer, self.group, self.short, self.view.seq, frame)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener

    # --- TurnSink ---------------------------------------------------------------------------

    async def step_started(self, index: int) -> None:
        step = StepView(index=index, reasoning="", started_at=timezone.now())
        self.steps[index] = step
        self._push(_Op("step", step=index), urgent=True)

    async def on_event(self, event: StreamEvent) -> None:
        step = self._current_step()
        if isinstance(event, ReasoningDelta):
            if step.first_reasoning_at is None:
                step.first_reasoning_at = timezone.now()
                self._push(_Op("head", step=step.index), urgent=True)
            self._push(_Op("reasoning", event.text, step.index))
        elif isinstance(event, ContentDelta):
            if not step.answered:
                step.answered = True
                step.reasoning_ended_at = step.reasoning_ended_at or timezone.now()
                self._push(_Op("head", step=step.index), urgent=True)
            self._push(_Op("content", event.text, step.index))
        elif isinstance(event, MalformedLine):
            self.malformed_lines += 1
            logger.warning("turn %s: skipped a malformed stream line: %s", self.short, event.reason)

    async def step_finished(self, index: int, result: StepResult) -> None:
        step = self._current_step()
        step.finished_at = timezone.now()
        if step.first_reasoning_at is not None and step.reasoning_ended_at is None:
            step.reasoning_ended_at = step.finished_at
        self.finish_reason = result.finish_reason or ""
        self._push(_Op("head", step=index), urgent=True)
        if result.usage is not None:
            self.view.prompt_tokens += result.usage.prompt_tokens
            self.view.cached_tokens += result.usage.cached_tokens
            self.view.completion_tokens += result.usage.completion_tokens
            self.view.reasoning_tokens += result.usage.reasoning_tokens

    async def run_tool_calls(self, index: int, calls: list[PreparedCall]) -> list[str]:
        rows = await self._db(toolruns.record_calls, self.message_id, index, calls)
        for row in rows:
            self._push(_Op("tool", step=index, call=row), urgent=True)
        try:
            await self._db(toolruns.dispatch, rows)
            finished = await self._wait_for_tools(rows)
        except asyncio.CancelledError:
            await asyncio.shield(self._cancel_tools(rows))
            raise
        by_id = {row.id: row for row in finished}
        return [toolruns.model_content(by_id[row.id]) for row in rows]

    async def _wait_for_tools(self, rows: list[ToolCall]) -> list[ToolCall]:
        """Wait until every call has an outcome, showing each change as it happens."""
        latest = {row.id: row for row in rows}
        poll = settings.GLASSBOX_TOOL_POLL_MS / 1000
        next_overdue_check = time.monotonic() + 1.0
        while pending := [pk for pk, row in latest.items() if not row.is_final]:
            self.tool_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.tool_changed.wait(), poll)
            for row in await self._db(toolruns.fetch, pending):
                old = latest[row.id]
                if (row.status, row.started_at, row.attempts) != (
                    old.status,
                    old.started_at,
                    old.attempts,
                ):
                    latest[row.id] = row
                    self._push(_Op("tool", step=row.step_index, call=row), urgent=True)
            still = [pk for pk in pending if not latest[pk].is_final]
            if still and time.monotonic() >= next_overdue_check:
                next_overdue_check = time.monotonic() + 1.0
                if await self._db(toolruns.time_out_overdue, still):
                    self.tool_changed.set()
        return list(latest.values())

    async def _cancel_tools(self, rows: list[ToolCall]) -> None:
        task_ids = await self._db(toolruns.cancel, [row.id for row in rows])
        for row in await self._db(toolruns.fetch, [row.id for row in rows]):
            self._push(_Op("tool", step=row.step_index, call=row))
        if task_ids and settings.REDIS_URL:
            # The filesystem broker has no broadcast; there a queued task finds its call
            # cancelled and does nothing, and a running one is told through should_stop.
            with contextlib.suppress(Exception):
                await self._db(_revoke, task_ids)

    # --- ops and frames ---------------------------------------------------------------------

    def _current_step(self) -> StepView:
        return self.steps[max(self.steps)]

    def _push(self, op: _Op, *, urgent: bool = False) -> None:
        last = self.ops[-1] if self.ops else None
        if last and op.kind in {"reasoning", "content"} and last.kind == op.kind:
            last.text += op.text
        else:
            self.ops.append(op)
        self.pending_chars += len(op.text)
        self.dirty.set()
        if urgent or self.pending_chars >= settings.GLASSBOX_COALESCE_CHARS:
            self.urgent.set()

    def _take_frame(self, *, final: bool = False) -> str:
        """Apply pending ops to the applied state and return the frame that shows them."""
        parts: list[str] = []
        heads: set[int] = set()
        for op in self.ops:
            if op.kind == "step":
                step = self.steps[op.step]
                self.view.steps.append(step)
                parts.append(
                    f'<div id="steps-{self.short}" hx-swap-oob="beforeend">'
                    f"{render_step(self.view, step)}</div>"
                )
                heads.add(op.step)
            elif op.kind == "reasoning":
                self.steps[op.step].reasoning += op.text
                parts.append(
                    f'<span id="r-{self.short}-{op.step}" hx-swap-oob="beforeend">'
                    f"{escape_text(op.text)}</span>"
                )
            elif op.kind == "content":
                parts.append(self._content_html(self.markdown.feed(op.text), op.text))
            elif op.kind == "tool" and op.call is not None:
                parts.append(self._tool_html(op.call))
            else:
                heads.add(op.step)
        if final:
            parts.append(self._content_html(self.markdown.finish(), None))
        self.ops.clear()
        self.pending_chars = 0
        # Shown steps are view.steps[0..n) in index order: only those get a head update.
        shown = len(self.view.steps)
        for index in sorted(heads if not final else self.steps):
            if index < shown:
                parts.append(render_step_head(self.view, self.view.steps[index]))
        if heads or final:
            parts.append(render_thinking_head(self.view))
        if final:
            parts.append(render_footer(self.view))
        self.view.seq += 1
        self.view.answer_html = mark_safe("".join(self.blocks))  # noqa: S308 - sanitised blocks
        self.view.tail = self.markdown.tail
        return events.frame_header(self.short, self.view.seq, "d") + "".join(parts)

    def _content_html(self, blocks: list[str], appended: str | None) -> str:
        if appended is not None:
            self.answer_text.append(appended)
        if not blocks and appended is not None:
            return (
                f'<span id="t-{self.short}" hx-swap-oob="beforeend">{escape_text(appended)}</span>'
            )
        self.blocks.extend(blocks)
        return (
            f'<div id="b-{self.short}" hx-swap-oob="beforeend">{"".join(blocks)}</div>'
            f'<span id="t-{self.short}" hx-swap-oob="innerHTML">'
            f"{escape_text(self.markdown.tail)}</span>"
        )

    def _tool_html(self, call: ToolCall) -> str:
        tools = self.steps[call.step_index].tools
        for position, existing in enumerate(tools):
            if existing.id == call.id:
                tools[position] = call
                return render_tool_card(self.view, call, oob=True)
        tools.append(call)
        return (
            f'<div id="tools-{self.short}-{call.step_index}" hx-swap-oob="beforeend">'
            f"{render_tool_card(self.view, call)}</div>"
        )

    def _snapshot_html(self) -> str:
        kind = events.frame_header(self.short, self.view.seq, "snap")
        return kind + self.user_html + render_assistant(self.view, oob=True)

    async def _flusher(self) -> None:
        window = settings.GLASSBOX_COALESCE_MS / 1000
        while not self.done.is_set():
            await self.dirty.wait()
            delay = self.last_flush + window - time.monotonic()
            if delay > 0 and not self.urgent.is_set() and not self.done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.urgent.wait(), delay)
            self.dirty.clear()
            self.urgent.clear()
            async with self.flush_lock:
                if not self.ops:
                    continue
                frame = self._take_frame()
                self.last_flush = time.monotonic()
                await events.publish_frame(self.layer, self.group, self.short, self.view.seq, frame)

    async def _listen(self) -> None:
        """Answer snapshot requests and stop requests sent to this runner's channel."""
        while True:
            event = await self.layer.receive(self.channel)
            if event.get("type") == "snapshot.request":
                async with self.flush_lock:
                    html, seq = self._snapshot_html(), self.view.seq
                await events.publish_snapshot(
                    self.layer, event["reply_channel"], self.short, seq, html
                )
            elif event.get("type") == "turn.stop":
                self.request_stop()
            elif event.get("type") == "tool.changed":
                self.tool_changed.set()

    def request_stop(self) -> None:
        self.stop_requested = True
        if self.stream_task is not None and not self.stream_task.done():
            self.stream_task.cancel()

    async def _checkpointer(self) -> None:
        interval = settings.GLASSBOX_CHECKPOINT_SECONDS
        while not self.done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), interval)
            if self.done.is_set():
                return
            async with self.flush_lock:
                snapshot = self._checkpoint_values()
            if await self._db(self._save_checkpoint, snapshot):
                self.request_stop()

    # --- database ---------------------------------------------------------------------------

    async def _db(self, fn: Any, *args: Any) -> Any:
        # Many runners checkpoint at once: a few threads, each keeping its own connection.
        return await sync_to_async(fn, thread_sensitive=False, executor=_DB_THREADS)(*args)

    def _start(self) -> TurnStart:
        """Load what the turn needs and record who runs it, in one trip to the database."""
        turn = load_turn(self.message_id)
        Message.objects.filter(id=self.message_id).update(
            runner_channel=self.channel,
            heartbeat_at=timezone.now(),
            provider=self.view.provider,
            model=self.view.model,
        )
        return turn

    def _save_step(self, step: StepView, **fields: Any) -> None:
        fields.update(
            reasoning=step.reasoning,
            started_at=step.started_at,
            first_reasoning_at=step.first_reasoning_at,
            reasoning_ended_at=step.reasoning_ended_at,
        )
        rows = Step.objects.filter(message_id=self.message_id, index=step.index)
        if not rows.update(**fields):
            Step.objects.create(message_id=self.message_id, index=step.index, **fields)

    def _checkpoint_values(self) -> dict[str, Any]:
        return {
            "seq": self.view.seq,
            "text": "".join(self.answer_text),
            # The step being streamed; the final write stores every step.
            "step": replace(self.view.steps[-1]) if self.view.steps else None,
        }

    def _save_checkpoint(self, values: dict[str, Any]) -> bool:
        """Store the applied state; returns whether a stop was requested from elsewhere."""
        with transaction.atomic():
            Message.objects.filter(id=self.message_id, status=MessageStatus.STREAMING).update(
                text=values["text"], seq=values["seq"], heartbeat_at=timezone.now()
            )
            if values["step"] is not None:
                self._save_step(values["step"])
        return Message.objects.filter(id=self.message_id, stop_requested=True).exists()

    def _save_final(self) -> None:
        view = self.view
        with transaction.atomic():
            for step in view.steps:
                last = step is view.steps[-1]
                self._save_step(
                    step,
                    content="".join(self.answer_text) if last else "",
                    finished_at=step.finished_at,
                    finish_reason=self.finish_reason if last else "",
                )
            # A turn that ends while calls are pending (stopped between recording and
            # dispatching them, say) leaves none of them waiting for ever.
            toolruns.cancel(
                ToolCall.objects.filter(message_id=self.message_id).values_list("id", flat=True)
            )
            Message.objects.filter(id=self.message_id).update(
                text="".join(self.answer_text),
                status=view.status,
                error_kind=view.error_kind,
                error_message=view.error_message,
                seq=view.seq,
                heartbeat_at=timezone.now(),
                finished_at=timezone.now(),
                prompt_tokens=view.prompt_tokens,
                cached_tokens=view.cached_tokens,
                completion_tokens=view.completion_tokens,
                reasoning_tokens=view.reasoning_tokens,
            )


def _revoke(task_ids: list[str]) -> None:
    from chat.celery import app

    app.control.revoke(task_ids, terminate=True)
