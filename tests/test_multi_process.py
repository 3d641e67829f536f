"""Two daphne processes on Redis: a viewer on B receives a turn started through A."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
import pytest
import websockets
from asgiref.sync import sync_to_async
from django.conf import settings

from chat.models import Message, MessageStatus
from chat.rendering import render_markdown
from tests.helpers import BrowserModel, header, make_turn, session_cookie
from tests.procs import child_database_url, daphne

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def redis_url() -> str:
    if not settings.REDIS_URL or settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        message = "needs REDIS_URL and PostgreSQL (run `make services-test`)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return settings.REDIS_URL


async def test_viewer_on_process_b_receives_a_turn_started_through_process_a(
    redis_url: str, model_server: Any, owner: Any
) -> None:
    env = {
        "DATABASE_URL": child_database_url(),
        "REDIS_URL": redis_url,
        "GLASSBOX_PROVIDER": "offline",
        "GLASSBOX_BASE_URL": model_server.base_url,
    }
    conversation, first = await make_turn(owner, "warm-up")
    await Message.objects.filter(id=first.id).aupdate(status=MessageStatus.COMPLETE)
    cookie = await session_cookie(owner)
    with daphne(env) as host_a, daphne(env) as host_b:
        async with websockets.connect(
            f"ws://{host_b}/ws/c/{conversation.id}/",
            additional_headers={"Cookie": f"sessionid={cookie}", "Origin": f"http://{host_b}"},
        ) as ws:
            async with httpx.AsyncClient(
                base_url=f"http://{host_a}", cookies={"sessionid": cookie}
            ) as http:
                page = await http.get(f"/c/{conversation.id}/")
                assert page.status_code == 200
                token = http.cookies.get("csrftoken") or ""
                response = await http.post(
                    f"/c/{conversation.id}/send/",
                    data={"text": "Across processes !rate:300 !words:200"},
                    headers={
                        "X-CSRFToken": token,
                        "HX-Request": "true",
                        "Referer": f"http://{host_a}/",
                    },
                )
                assert response.status_code == 200, response.text[:500]
            first_frame = str(await asyncio.wait_for(ws.recv(), 15))
            short, seq, kind = header(first_frame)
            assert (seq, kind) == (0, "snap")
            model = BrowserModel(short)
            model.apply(first_frame)
            while True:
                frame = str(await asyncio.wait_for(ws.recv(), 15))
                model.apply(frame)
                if 'class="msg-foot"' in frame and header(frame)[2] == "d":
                    break
    message = await sync_to_async(
        lambda: Message.objects.filter(conversation=conversation).order_by("-created_at").first()
    )()
    assert message is not None and message.status == MessageStatus.COMPLETE
    assert message.id.hex.startswith(short)
    assert model.gaps == model.duplicates == 0
    assert model.last_seq == message.seq
    assert model.answer_html == render_markdown(message.text)
