"""What a message looks like on the page, built from the database or from a live runner.

Both sources produce the same `MessageView`, and every HTML fragment (page render, htmx
response, WebSocket snapshot) comes from the same template partials.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe

from chat.models import Message, MessageStatus, Step, ToolCall
from chat.rendering import IncrementalMarkdown

PARTIALS = "chat/partials.html"


@dataclass
class StepView:
    index: int
    reasoning: str
    started_at: datetime
    first_reasoning_at: datetime | None = None
    reasoning_ended_at: datetime | None = None
    finished_at: datetime | None = None
    answered: bool = False  # the step streamed answer text (so its thinking is over)
    tools: list[ToolCall] = field(default_factory=list)

    @property
    def clock_started_ms(self) -> int | None:
        return epoch_ms(self.started_at)

    @property
    def clock_ended_ms(self) -> int | None:
        return epoch_ms(self.reasoning_ended_at or self.finished_at)

    @property
    def seconds(self) -> int:
        end = self.reasoning_ended_at or self.finished_at or timezone.now()
        return max(0, round((end - self.started_at).total_seconds()))


@dataclass
class MessageView:
    id: uuid.UUID
    status: str
    seq: int
    steps: list[StepView] = field(default_factory=list)
    answer_html: SafeString = field(default_factory=lambda: mark_safe(""))
    tail: str = ""
    error_kind: str = ""
    error_message: str = ""
    provider: str = ""
    model: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    conversation_id: uuid.UUID | None = None

    @property
    def short_id(self) -> str:
        return self.id.hex[:12]

    @property
    def is_live(self) -> bool:
        return self.status == MessageStatus.STREAMING

    @property
    def reasoning_started_at(self) -> datetime | None:
        return self.steps[0].started_at if self.steps else None

    @property
    def has_reasoning(self) -> bool:
        return any(step.reasoning for step in self.steps)

    @property
    def reasoning_ended_at(self) -> datetime | None:
        """When the thinking ended: the last step's end of reasoning, or its finish."""
        if not self.steps:
            return None
        last = self.steps[-1]
        return last.reasoning_ended_at or last.finished_at

    @property
    def thinking_seconds(self) -> int:
        start = self.reasoning_started_at
        if start is None:
            return 0
        end = timezone.now() if self.is_thinking else (self.reasoning_ended_at or timezone.now())
        return max(0, round((end - start).total_seconds()))

    @property
    def clock_started_ms(self) -> int | None:
        return epoch_ms(self.reasoning_started_at)

    @property
    def clock_ended_ms(self) -> int | None:
        return None if self.is_thinking else epoch_ms(self.reasoning_ended_at or timezone.now())

    @property
    def is_thinking(self) -> bool:
        """Live and not yet answering: the loop may still be reasoning or running tools."""
        return self.is_live and not (self.steps and self.steps[-1].answered)

    @property
    def step_count(self) -> int:
        return len(self.steps)

    @property
    def can_retry(self) -> bool:
        return self.status in {
            MessageStatus.FAILED,
            MessageStatus.INTERRUPTED,
            MessageStatus.STOPPED,
            MessageStatus.STEP_LIMIT,
        }


def epoch_ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def step_view(
    step: Step, tools: list[ToolCall] | None = None, *, answered: bool = False
) -> StepView:
    return StepView(
        index=step.index,
        reasoning=step.reasoning,
        started_at=step.started_at,
        first_reasoning_at=step.first_reasoning_at,
        reasoning_ended_at=step.reasoning_ended_at,
        finished_at=step.finished_at,
        answered=answered or bool(step.content),
        tools=tools or [],
    )


def message_view(
    message: Message, steps: Iterable[Step], tool_calls: Iterable[ToolCall] = ()
) -> MessageView:
    """The view of an assistant message as the database has it."""
    by_step: dict[int, list[ToolCall]] = {}
    for call in tool_calls:
        by_step.setdefault(call.step_index, []).append(call)
    markdown = IncrementalMarkdown()
    blocks = markdown.feed(message.text)
    if not message.is_live:
        blocks += markdown.finish()
    return MessageView(
        id=message.id,
        status=message.status,
        seq=message.seq,
        steps=[
            step_view(step, by_step.get(step.index), answered=not message.is_live) for step in steps
        ],
        answer_html=mark_safe("".join(blocks)),  # noqa: S308 - sanitised by chat.rendering
        tail=markdown.tail if message.is_live else "",
        error_kind=message.error_kind,
        error_message=message.error_message,
        provider=message.provider,
        model=message.model,
        prompt_tokens=message.prompt_tokens,
        cached_tokens=message.cached_tokens,
        completion_tokens=message.completion_tokens,
        reasoning_tokens=message.reasoning_tokens,
        conversation_id=message.conversation_id,
    )


def render_partial(name: str, **context: object) -> str:
    return render_to_string(f"{PARTIALS}#{name}", {"now_ms": epoch_ms(timezone.now()), **context})


def render_assistant(view: MessageView, *, oob: bool = False) -> str:
    return render_partial("assistant_message", m=view, oob=oob)


def render_user(message: Message, *, oob: bool = False) -> str:
    return render_partial("user_message", msg=message, oob=oob)


def render_thinking_head(view: MessageView) -> str:
    return render_partial("thinking_head", m=view, head_oob=True)


def render_footer(view: MessageView) -> str:
    return render_partial("message_footer", m=view, foot_oob=True)


def render_step(view: MessageView, step: StepView) -> str:
    return render_partial("step", m=view, step=step)


def render_step_head(view: MessageView, step: StepView) -> str:
    return render_partial("step_head", m=view, step=step, sh_oob=True)


def render_tool_card(view: MessageView, call: ToolCall, *, oob: bool = False) -> str:
    return render_partial("tool_card", m=view, tc=call, tc_oob=oob)


def escape_text(text: str) -> str:
    """Plain model text for a text node (reasoning, the answer's live tail)."""
    return html.escape(text, quote=False)
