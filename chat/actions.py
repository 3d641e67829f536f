"""State changes. Views and tasks call these; they validate nothing the forms already did."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from chat.models import Conversation, Message, MessageStatus
from chat.presentation import render_user

TITLE_CHARS = 60


def do_create_conversation(user: AbstractBaseUser) -> Conversation:
    """A new, empty conversation owned by `user`."""
    return Conversation.objects.create(owner_id=user.pk)


def do_rename_conversation(conversation: Conversation, title: str) -> None:
    conversation.title = title
    conversation.save(update_fields=["title", "updated_at"])


def do_set_conversation_tools(conversation: Conversation, enabled: list[str]) -> None:
    """Keep the tools the user switched off; tools added to the deployment later start on."""
    from chat.tooling import deployment_tools

    conversation.disabled_tools = sorted(
        tool.name for tool in deployment_tools() if tool.name not in enabled
    )
    conversation.save(update_fields=["disabled_tools", "updated_at"])


def do_delete_conversation(conversation: Conversation) -> None:
    """Delete a conversation; a turn still running finds its rows gone and just ends."""
    conversation.delete()


def _title_from(text: str) -> str:
    first_line = " ".join(text.split())
    return first_line if len(first_line) <= TITLE_CHARS else first_line[: TITLE_CHARS - 1] + "…"


@transaction.atomic
def do_send_message(conversation: Conversation, text: str) -> Message:
    """Store the user's message and an assistant message to stream into; returns the latter.

    The caller starts the runner after this commits.
    """
    conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)
    if not conversation.messages.exists() and conversation.title == "New conversation":
        conversation.title = _title_from(text)
    conversation.save(update_fields=["title", "updated_at"])
    user_message = Message.objects.create(
        conversation=conversation, role=Message.Role.USER, text=text
    )
    return _new_attempt(user_message)


def _new_attempt(user_message: Message) -> Message:
    return Message.objects.create(
        conversation_id=user_message.conversation_id,
        role=Message.Role.ASSISTANT,
        reply_to=user_message,
        status=MessageStatus.STREAMING,
        provider=settings.GLASSBOX_PROVIDER,
        model=settings.GLASSBOX_MODEL,
        heartbeat_at=timezone.now(),
    )


class TurnBusy(Exception):
    """The conversation already has a turn streaming."""


def has_live_turn(conversation: Conversation) -> bool:
    return conversation.messages.filter(status=MessageStatus.STREAMING).exists()


@transaction.atomic
def do_retry(message: Message) -> Message:
    """A new attempt at answering the user message that `message` answered."""
    if message.role != Message.Role.ASSISTANT or message.reply_to_id is None:
        raise ValueError("Only an assistant answer can be retried")
    Conversation.objects.select_for_update().get(pk=message.conversation_id)
    if has_live_turn(message.conversation):
        raise TurnBusy
    return _new_attempt(message.reply_to)  # type: ignore[arg-type]


def do_request_stop(message: Message) -> bool:
    """Flag a streaming turn to stop; the runner sees it now (channel) or at its checkpoint."""
    return bool(
        Message.objects.filter(id=message.id, status=MessageStatus.STREAMING).update(
            stop_requested=True
        )
    )


def do_sweep_interrupted(now: Any = None) -> int:
    """Mark streaming turns whose runner stopped beating as interrupted, keeping their text."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.GLASSBOX_HEARTBEAT_TIMEOUT)
    return Message.objects.filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True),
        status=MessageStatus.STREAMING,
    ).update(
        status=MessageStatus.INTERRUPTED,
        error_kind="interrupted",
        error_message="The server running this answer stopped; what streamed is kept.",
        finished_at=now,
    )


@dataclass(frozen=True)
class TurnStart:
    conversation_id: uuid.UUID
    group: str
    user_html: str
    history: list[dict[str, Any]]
    tools: list[str]


def conversation_tools(conversation: Conversation) -> list[str]:
    """The tools a turn in this conversation offers the model."""
    from chat.tooling import deployment_tools

    return [t.name for t in deployment_tools() if t.name not in conversation.disabled_tools]


def load_turn(message_id: uuid.UUID) -> TurnStart:
    """What a runner needs to start: the conversation's group and the request history."""
    message = Message.objects.select_related("conversation", "reply_to").get(id=message_id)
    assert message.reply_to is not None
    return TurnStart(
        conversation_id=message.conversation_id,
        group=message.conversation.group_name,
        user_html=render_user(message.reply_to, oob=True),
        history=build_history(message.conversation, message.reply_to),
        tools=conversation_tools(message.conversation),
    )


def build_history(conversation: Conversation, upto: Message) -> list[dict[str, Any]]:
    """The chat-completions messages for answering `upto`: each earlier question with its
    last attempt that produced text."""
    messages: list[dict[str, Any]] = []
    rows = list(
        conversation.messages.filter(created_at__lte=upto.created_at).order_by("created_at")
    )
    answers: dict[uuid.UUID, Message] = {}
    for row in rows:
        if row.role == Message.Role.ASSISTANT and row.text and row.reply_to_id is not None:
            answers[row.reply_to_id] = row
    for row in rows:
        if row.role != Message.Role.USER:
            continue
        messages.append({"role": "user", "content": row.text})
        if row.id == upto.id:
            break
        answer = answers.get(row.id)
        if answer is not None:
            messages.append({"role": "assistant", "content": answer.text})
    return messages
