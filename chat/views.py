"""Thin views: parse with a form, call an action, render a partial."""

from __future__ import annotations

import uuid
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect

from chat import actions, events
from chat.access import get_conversation_for_user, get_message_for_user
from chat.forms import MessageForm, RenameForm, ToolsForm
from chat.models import Conversation, Message, MessageStatus, ToolCall
from chat.presentation import message_view
from chat.streaming import start_turn
from chat.tooling import tool_choices


def _sidebar(user: object) -> list[Conversation]:
    return list(Conversation.objects.filter(owner_id=user.pk).only("id", "title", "updated_at"))  # type: ignore[attr-defined]


def _page_context(request: HttpRequest, conversation: Conversation | None) -> dict[str, object]:
    items: list[tuple[str, Any]] = []
    if conversation is not None:
        messages = conversation.messages.order_by("created_at").prefetch_related(
            "steps", "tool_calls"
        )
        for message in messages:
            if message.role == Message.Role.USER:
                items.append(("user", message))
            else:
                view = message_view(message, message.steps.all(), message.tool_calls.all())
                items.append(("assistant", view))
    return {
        "conversations": _sidebar(request.user),
        "conversation": conversation,
        "items": items,
        "form": MessageForm(),
        "busy": any(kind == "assistant" and item.is_live for kind, item in items),
        "tool_choices": tool_choices(conversation) if conversation is not None else [],
    }


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "chat/conversation.html", _page_context(request, None))


@login_required
def conversation_page(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_for_user(request.user, conversation_id)
    return render(request, "chat/conversation.html", _page_context(request, conversation))


@login_required
@require_POST
def new_conversation(request: HttpRequest) -> HttpResponse:
    conversation = actions.do_create_conversation(request.user)  # type: ignore[arg-type]
    return redirect("conversation", conversation_id=conversation.id)


def _composer(
    request: HttpRequest, conversation: Conversation | None, form: MessageForm, status: int = 200
) -> HttpResponse:
    return render(
        request,
        "chat/partials.html#composer",
        {"conversation": conversation, "form": form},
        status=status,
    )


def _accept_message(
    request: HttpRequest, user: Any, conversation_id: uuid.UUID | None
) -> tuple[HttpResponse | None, Conversation | None, Message | None]:
    """All of a send's database work in one go (one hop off the event loop): either an
    error response, or the conversation and the assistant message to stream into."""
    conversation = None
    if conversation_id is not None:
        conversation = get_conversation_for_user(user, conversation_id)
    form = MessageForm(request.POST)
    if not form.is_valid():
        return _composer(request, conversation, form, 422), conversation, None
    if conversation is not None and actions.has_live_turn(conversation):
        form.add_error(None, "The model is still answering. Stop it or wait for it to finish.")
        return _composer(request, conversation, form, 409), conversation, None
    conversation = conversation or actions.do_create_conversation(user)
    return None, conversation, actions.do_send_message(conversation, form.cleaned_data["text"])


@login_required
@require_POST
async def send_message(
    request: HttpRequest, conversation_id: uuid.UUID | None = None
) -> HttpResponse:
    """Store the message, start its turn in this process, answer with a fresh composer."""
    user = await request.auser()
    refused, conversation, assistant = await sync_to_async(_accept_message)(
        request, user, conversation_id
    )
    if refused is not None:
        return refused
    assert conversation is not None and assistant is not None
    start_turn(assistant.id)
    url = reverse("conversation", kwargs={"conversation_id": conversation.id})
    if conversation_id is None:
        return HttpResponseClientRedirect(url) if request.htmx else HttpResponseRedirect(url)  # type: ignore[attr-defined]
    if not request.htmx:  # type: ignore[attr-defined]
        return HttpResponseRedirect(url)
    return await sync_to_async(_composer)(request, conversation, MessageForm())


@login_required
@require_POST
async def stop_turn(
    request: HttpRequest, conversation_id: uuid.UUID, message_id: uuid.UUID
) -> HttpResponse:
    user = await request.auser()
    message = await sync_to_async(get_message_for_user)(user, conversation_id, message_id)
    if await sync_to_async(actions.do_request_stop)(message) and message.runner_channel:
        await events.publish_stop(get_channel_layer(), message.runner_channel)
    return HttpResponse(status=204)


@login_required
@require_POST
async def retry_turn(
    request: HttpRequest, conversation_id: uuid.UUID, message_id: uuid.UUID
) -> HttpResponse:
    user = await request.auser()
    message = await sync_to_async(get_message_for_user)(user, conversation_id, message_id)
    if message.role != Message.Role.ASSISTANT or message.status == MessageStatus.STREAMING:
        return HttpResponse("Only a finished answer can be retried.", status=409)
    try:
        attempt = await sync_to_async(actions.do_retry)(message)
    except actions.TurnBusy:
        return HttpResponse("The model is still answering.", status=409)
    start_turn(attempt.id)
    return HttpResponse(status=204)


@login_required
@require_POST
def rename_conversation(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_for_user(request.user, conversation_id)
    form = RenameForm(request.POST)
    if form.is_valid():
        actions.do_rename_conversation(conversation, form.cleaned_data["title"])
    if request.htmx:  # type: ignore[attr-defined]
        return render(
            request,
            "chat/partials.html#sidebar",
            {"conversations": _sidebar(request.user), "conversation": conversation},
        )
    return redirect("conversation", conversation_id=conversation.id)


@login_required
@require_POST
def delete_conversation(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_for_user(request.user, conversation_id)
    actions.do_delete_conversation(conversation)
    url = reverse("home")
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)  # type: ignore[attr-defined]


@login_required
def tool_result(
    request: HttpRequest, conversation_id: uuid.UUID, call_id: uuid.UUID
) -> HttpResponse:
    """The whole result of one tool call ("show all" on a truncated card)."""
    conversation = get_conversation_for_user(request.user, conversation_id)
    call = ToolCall.objects.filter(id=call_id, message__conversation=conversation).first()
    if call is None:
        raise Http404("No such tool call")
    return render(request, "chat/partials.html#tool_result", {"tc": call})


@login_required
@require_POST
def set_tools(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """Switch tools on or off for one conversation."""
    conversation = get_conversation_for_user(request.user, conversation_id)
    form = ToolsForm(request.POST, choices=[name for name, _, _, _ in tool_choices(conversation)])
    if form.is_valid():
        actions.do_set_conversation_tools(conversation, form.cleaned_data["enabled"])
    if request.htmx:  # type: ignore[attr-defined]
        return render(
            request,
            "chat/partials.html#tools_menu",
            {"conversation": conversation, "tool_choices": tool_choices(conversation)},
        )
    return redirect("conversation", conversation_id=conversation.id)
