"""Recall: search the past reasoning a user may see (a simple first version).

Every query word must appear in the step's reasoning; newer steps rank first. Only the user's
own conversations are searched.
"""

from __future__ import annotations

from django.db.models import Q

from agents.tools import RecallHit
from chat.models import Step

SNIPPET_CHARS = 300


def recall_for_user(user_id: int, query: str, limit: int) -> list[RecallHit]:
    words = [w for w in query.split() if len(w) > 1][:8]
    if not words:
        return []
    condition = Q()
    for word in words:
        condition &= Q(reasoning__icontains=word)
    steps = (
        Step.objects.filter(condition, message__conversation__owner_id=user_id)
        .select_related("message__conversation")
        .order_by("-started_at")[:limit]
    )
    return [
        RecallHit(
            conversation_id=str(step.message.conversation_id),
            message_id=str(step.message_id),
            step_index=step.index,
            title=step.message.conversation.title,
            snippet=_snippet(step.reasoning, words[0]),
            created_at=step.started_at.isoformat(),
        )
        for step in steps
    ]


def _snippet(text: str, word: str) -> str:
    at = max(0, text.lower().find(word.lower()) - SNIPPET_CHARS // 3)
    piece = " ".join(text[at : at + SNIPPET_CHARS].split())
    return ("…" if at else "") + piece
