"""Who may see what. Every lookup by id that a user makes goes through here.

Outsiders get a 404 (never a 403), so the existence of a conversation is not revealed.
"""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import Http404

from chat.models import Conversation, Message

AnyUser = AbstractBaseUser | AnonymousUser


def _parse_uuid(value: str | uuid.UUID) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def find_conversation_for_user(
    user: AnyUser, conversation_id: str | uuid.UUID
) -> Conversation | None:
    """The conversation if `user` may see it, else None (also for malformed ids)."""
    parsed = _parse_uuid(conversation_id)
    if parsed is None or not user.is_authenticated:
        return None
    return Conversation.objects.filter(id=parsed, owner_id=user.pk).first()


def get_conversation_for_user(user: AnyUser, conversation_id: str | uuid.UUID) -> Conversation:
    """The conversation if `user` may see it; Http404 otherwise."""
    conversation = find_conversation_for_user(user, conversation_id)
    if conversation is None:
        raise Http404("No such conversation")
    return conversation


def get_message_for_user(
    user: AnyUser, conversation_id: str | uuid.UUID, message_id: str | uuid.UUID
) -> Message:
    """An assistant or user message of a conversation `user` may see; Http404 otherwise."""
    conversation = get_conversation_for_user(user, conversation_id)
    parsed = _parse_uuid(message_id)
    message = (
        Message.objects.filter(id=parsed, conversation=conversation).first() if parsed else None
    )
    if message is None:
        raise Http404("No such message")
    return message
