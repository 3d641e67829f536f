"""Conversations, messages and the steps of each assistant turn.

The database is the source of truth for everything shown; live streaming state lives in the
runner's memory and is checkpointed here about once a second (never once per token).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, default="New conversation")
    # Tools the user switched off for this conversation (new deployment tools start on).
    disabled_tools = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["owner", "-updated_at"])]

    def __str__(self) -> str:
        return self.title

    @property
    def group_name(self) -> str:
        """The channel-layer group every viewer of this conversation joins."""
        return f"conv-{self.id.hex}"


class MessageStatus(models.TextChoices):
    STREAMING = "streaming", "Streaming"
    COMPLETE = "complete", "Complete"
    STOPPED = "stopped", "Stopped"
    INTERRUPTED = "interrupted", "Interrupted"
    FAILED = "failed", "Failed"
    STEP_LIMIT = "step_limit", "Step limit reached"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    # An assistant message answers one user message; Retry adds another attempt.
    reply_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="attempts"
    )
    text = models.TextField(blank=True, default="")
    status = models.CharField(
        max_length=16, choices=MessageStatus.choices, default=MessageStatus.COMPLETE
    )
    error_kind = models.CharField(max_length=32, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    provider = models.CharField(max_length=64, blank=True, default="")
    model = models.CharField(max_length=128, blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    # Live-stream bookkeeping: the last frame number published, who runs the turn.
    seq = models.PositiveIntegerField(default=0)
    runner_channel = models.CharField(max_length=200, blank=True, default="")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    stop_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(fields=["conversation", "created_at"]),
            models.Index(fields=["status", "heartbeat_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.role} {self.id}"

    @property
    def short_id(self) -> str:
        """Element-id prefix in the page: short, because it is on every streamed frame."""
        return self.id.hex[:12]

    @property
    def is_live(self) -> bool:
        return self.status == MessageStatus.STREAMING


class Step(models.Model):
    """One model request within an assistant turn: its reasoning, answer text and timings."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField()
    reasoning = models.TextField(blank=True, default="")
    content = models.TextField(blank=True, default="")
    finish_reason = models.CharField(max_length=32, blank=True, default="")
    started_at = models.DateTimeField()
    first_reasoning_at = models.DateTimeField(null=True, blank=True)
    reasoning_ended_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["index"]
        constraints = [
            models.UniqueConstraint(fields=["message", "index"], name="unique_step_index")
        ]

    def __str__(self) -> str:
        return f"step {self.index} of {self.message_id}"

    def thinking_seconds(self, now: datetime | None = None) -> float | None:
        """Seconds spent reasoning, from server timestamps (None if it never reasoned)."""
        if self.first_reasoning_at is None:
            return None
        end = self.reasoning_ended_at or self.finished_at or now
        if end is None:
            return None
        return max(0.0, (end - self.started_at).total_seconds())


class ToolSetting(models.Model):
    """Whether a tool is offered on this deployment (admin-controlled)."""

    name = models.CharField(max_length=64, primary_key=True)
    enabled = models.BooleanField(default=True)

    def __str__(self) -> str:
        return f"{self.name}: {'on' if self.enabled else 'off'}"


class ToolCallStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    TIMED_OUT = "timed_out", "Timed out"
    CANCELLED = "cancelled", "Cancelled"


FINAL_TOOL_STATUSES = (
    ToolCallStatus.DONE,
    ToolCallStatus.FAILED,
    ToolCallStatus.TIMED_OUT,
    ToolCallStatus.CANCELLED,
)


class ToolCall(models.Model):
    """One tool call the model made: what it asked, who ran it, what came back, and when."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="tool_calls")
    step_index = models.PositiveIntegerField()
    index = models.PositiveIntegerField()
    call_id = models.CharField(max_length=255)  # exactly as the provider sent it
    name = models.CharField(max_length=128)
    arguments_raw = models.TextField(blank=True, default="")
    arguments = models.JSONField(null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=ToolCallStatus.choices, default=ToolCallStatus.QUEUED
    )
    result = models.TextField(blank=True, default="")
    task_id = models.CharField(max_length=64, blank=True, default="")
    worker = models.CharField(max_length=200, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    time_limit = models.FloatField(default=30.0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["step_index", "index"]
        indexes = [models.Index(fields=["message", "step_index"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    @property
    def short_id(self) -> str:
        return self.id.hex[:12]

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_TOOL_STATUSES
