"""Pages and form posts: login, access, bad input."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from chat import actions
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def conversation(owner: Any) -> Conversation:
    return actions.do_create_conversation(owner)


def as_user(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def conversation_urls(conversation: Conversation, message: Message) -> list[tuple[str, str]]:
    c, m = conversation.id, message.id
    return [
        ("get", reverse("conversation", args=[c])),
        ("post", reverse("send", args=[c])),
        ("post", reverse("rename", args=[c])),
        ("post", reverse("delete", args=[c])),
        ("post", reverse("stop", args=[c, m])),
        ("post", reverse("retry", args=[c, m])),
        ("post", reverse("tools", args=[c])),
    ]


def test_every_page_requires_login(conversation: Conversation) -> None:
    message = Message.objects.create(conversation=conversation, role="user", text="hi")
    client = Client()
    for method, url in [("get", reverse("home")), *conversation_urls(conversation, message)]:
        response = getattr(client, method)(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login")), url


def test_outsider_gets_404_on_every_conversation_url(
    conversation: Conversation, outsider: Any
) -> None:
    message = Message.objects.create(conversation=conversation, role="user", text="secret")
    client = as_user(outsider)
    for method, url in conversation_urls(conversation, message):
        response = getattr(client, method)(url, {"text": "x", "title": "x"})
        assert response.status_code == 404, url
    assert Conversation.objects.filter(id=conversation.id, title="New conversation").exists()


def test_unknown_conversation_is_404(owner: Any) -> None:
    response = as_user(owner).get(reverse("conversation", args=[uuid.uuid4()]))
    assert response.status_code == 404


def test_conversation_page_shows_history_and_offline_label(
    owner: Any, conversation: Conversation
) -> None:
    Message.objects.create(conversation=conversation, role="user", text="Hello <b>there</b>")
    response = as_user(owner).get(reverse("conversation", args=[conversation.id]))
    assert response.status_code == 200
    body = response.content.decode()
    assert "Hello &lt;b&gt;there&lt;/b&gt;" in body
    assert "offline simulator" in body
    assert f'ws-connect="/ws/c/{conversation.id}/"' in body


def test_empty_message_is_a_form_error_and_nothing_is_stored(
    owner: Any, conversation: Conversation
) -> None:
    response = as_user(owner).post(
        reverse("send", args=[conversation.id]), {"text": "   "}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 422
    assert "Write a message first." in response.content.decode()
    assert not Message.objects.exists()


def test_message_over_the_limit_is_refused_and_nothing_is_sent(
    owner: Any, conversation: Conversation, settings: Any
) -> None:
    settings.GLASSBOX_MAX_MESSAGE_CHARS = 1000
    response = as_user(owner).post(
        reverse("send", args=[conversation.id]), {"text": "x" * 1001}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 422
    body = response.content.decode()
    assert "1,001 characters; the limit is 1,000" in body
    assert "x" * 1001 in body, "the text stays in the composer so nothing is lost"
    assert not Message.objects.exists()


def test_rename_and_delete(owner: Any, conversation: Conversation) -> None:
    client = as_user(owner)
    response = client.post(
        reverse("rename", args=[conversation.id]), {"title": "Renamed"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    assert "Renamed" in response.content.decode()
    conversation.refresh_from_db()
    assert conversation.title == "Renamed"
    response = client.post(reverse("delete", args=[conversation.id]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert response["HX-Redirect"] == reverse("home")
    assert not Conversation.objects.filter(id=conversation.id).exists()


def test_login_page_signs_in(owner: Any) -> None:
    client = Client()
    response = client.post(reverse("login"), {"username": "owner", "password": "owner-pass-123"})
    assert response.status_code == 302
    assert client.get(reverse("home")).status_code == 200
    response = Client().post(reverse("login"), {"username": "owner", "password": "wrong"})
    assert "did not match" in response.content.decode()


def test_sweeper_marks_dead_turns_interrupted_and_keeps_their_text(
    owner: Any, conversation: Conversation
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from chat.tasks import sweep_interrupted_turns

    user_message = Message.objects.create(conversation=conversation, role="user", text="q")
    stale = Message.objects.create(
        conversation=conversation,
        role="assistant",
        reply_to=user_message,
        status="streaming",
        text="partial answer",
        heartbeat_at=timezone.now() - timedelta(minutes=5),
    )
    fresh = Message.objects.create(
        conversation=conversation,
        role="assistant",
        reply_to=user_message,
        status="streaming",
        heartbeat_at=timezone.now(),
    )
    assert sweep_interrupted_turns() == 1
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.status == "interrupted" and stale.text == "partial answer"
    assert fresh.status == "streaming"


def test_admin_switches_tools_for_the_deployment(owner: Any, django_user_model: Any) -> None:
    from chat.actions import conversation_tools
    from chat.models import ToolSetting

    admin_user = django_user_model.objects.create_superuser("root", password="root-pass-123")
    response = as_user(admin_user).get("/admin/chat/toolsetting/")
    body = response.content.decode()
    assert response.status_code == 200
    assert "fetch_url" in body and "echo" in body
    conversation = actions.do_create_conversation(owner)
    assert "fetch_url" in conversation_tools(conversation)
    ToolSetting.objects.filter(name="fetch_url").update(enabled=False)
    assert "fetch_url" not in conversation_tools(conversation)


def test_user_switches_tools_per_conversation(owner: Any, conversation: Conversation) -> None:
    from chat.actions import conversation_tools

    offered = conversation_tools(conversation)
    assert "recall" in offered
    keep = [name for name in offered if name != "recall"]
    response = as_user(owner).post(
        reverse("tools", args=[conversation.id]), {"enabled": keep}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    assert 'value="recall"' in response.content.decode()
    conversation.refresh_from_db()
    assert conversation.disabled_tools == ["recall"]
    assert conversation_tools(conversation) == keep


def test_a_tool_result_is_shown_whole_to_its_owner_only(
    owner: Any, outsider: Any, conversation: Conversation
) -> None:
    from chat.models import Step, ToolCall

    question = Message.objects.create(conversation=conversation, role="user", text="q")
    answer = Message.objects.create(
        conversation=conversation, role="assistant", reply_to=question, status="complete"
    )
    Step.objects.create(
        message=answer, index=0, reasoning="use python", started_at=answer.created_at
    )
    call = ToolCall.objects.create(
        message=answer,
        step_index=0,
        index=0,
        call_id="python:0",
        name="python",
        arguments_raw='{"code": "print(1)\\nprint(2)"}',
        arguments={"code": "print(1)\nprint(2)"},
        status="done",
        result="x" * 9000 + "END",
    )
    url = reverse("tool-result", args=[conversation.id, call.id])
    response = as_user(owner).get(url)
    assert response.status_code == 200
    assert "x" * 9000 + "END" in response.content.decode()
    assert as_user(outsider).get(url).status_code == 404
    page = as_user(owner).get(reverse("conversation", args=[conversation.id])).content.decode()
    assert "code:\nprint(1)\nprint(2)" in page, "code arguments are shown as lines"
    assert "Show all (9003 characters)" in page
