"""The conversation socket through the real ASGI app (session login, access, catch-up)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from chat.asgi import application
from chat.models import MessageStatus
from chat.rendering import render_markdown
from chat.streaming import TurnSession
from tests.helpers import BrowserModel, header, make_turn, reload_message, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True)]


def communicator(conversation_id: Any, cookie: str | None) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return WebsocketCommunicator(application, f"/ws/c/{conversation_id}/", headers=headers)


async def receive_until_final(
    ws: WebsocketCommunicator, page: BrowserModel, timeout: float = 10
) -> None:
    while True:
        frame = await ws.receive_from(timeout=timeout)
        page.apply(frame)
        if 'class="msg-foot"' in frame and header(frame)[1] > 0 and header(frame)[2] == "d":
            return


async def test_outsider_and_anonymous_cannot_join(owner: Any, outsider: Any) -> None:
    conversation, _ = await make_turn(owner, "private")
    for cookie in (await session_cookie(outsider), None):
        ws = communicator(conversation.id, cookie)
        connected, _ = await ws.connect()
        assert not connected
    ws = communicator("not-a-uuid", await session_cookie(owner))
    connected, _ = await ws.connect()
    assert not connected


async def test_owner_receives_the_whole_turn_live(provider: Any, owner: Any) -> None:
    conversation, assistant = await make_turn(owner, "Explain tides")
    await assistant.__class__.objects.filter(id=assistant.id).aupdate(status=MessageStatus.COMPLETE)
    ws = communicator(conversation.id, await session_cookie(owner))
    connected, _ = await ws.connect()
    assert connected
    # A new turn, started through the send view like a browser does.
    client = AsyncClient()
    await client.aforce_login(owner)
    response = await client.post(
        f"/c/{conversation.id}/send/", {"text": "And the moon?"}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    first = await ws.receive_from(timeout=10)
    short, seq, kind = header(first)
    assert (seq, kind) == (0, "snap")
    assert "And the moon?" in first
    page = BrowserModel(short)
    page.apply(first)
    await receive_until_final(ws, page)
    await ws.disconnect()
    message = await reload_message_by_short(conversation, short)
    assert message.status == MessageStatus.COMPLETE
    assert page.answer_html == render_markdown(message.text)
    assert page.duplicates == page.gaps == 0


async def reload_message_by_short(conversation: Any, short: str) -> Any:
    async for message in conversation.messages.filter(role="assistant"):
        if message.id.hex.startswith(short):
            return message
    raise AssertionError(short)


async def test_reconnect_mid_stream_gives_no_gap_and_no_duplicate(
    provider: Any, owner: Any
) -> None:
    conversation, assistant = await make_turn(owner, "Long one !rate:400 !words:400 !think:200")
    cookie = await session_cookie(owner)
    ws = communicator(conversation.id, cookie)
    assert (await ws.connect())[0]
    task = asyncio.create_task(TurnSession(assistant.id).run())
    page = BrowserModel(assistant.id.hex[:12])
    # Read part of the stream, then drop the connection.
    while page.last_seq < 5:
        page.apply(await ws.receive_from(timeout=10))
    seen_before = page.last_seq
    await ws.disconnect()
    await asyncio.sleep(0.3)  # frames keep flowing while nobody listens
    ws = communicator(conversation.id, cookie)
    assert (await ws.connect())[0]
    snapshot = await ws.receive_from(timeout=10)
    assert header(snapshot)[2] == "snap"
    assert header(snapshot)[1] > seen_before
    page.apply(snapshot)
    await receive_until_final(ws, page)
    await task
    await ws.disconnect()
    message = await reload_message(assistant.id)
    assert message.status == MessageStatus.COMPLETE
    assert page.duplicates == 0 and page.gaps == 0
    assert page.answer_html == render_markdown(message.text)
    assert page.last_seq == message.seq


async def test_client_that_sees_a_gap_gets_a_snapshot(provider: Any, owner: Any) -> None:
    conversation, assistant = await make_turn(owner, "Gap test !rate:300 !words:300")
    ws = communicator(conversation.id, await session_cookie(owner))
    assert (await ws.connect())[0]
    task = asyncio.create_task(TurnSession(assistant.id).run())
    short = assistant.id.hex[:12]
    page = BrowserModel(short)
    while page.last_seq < 3:
        page.apply(await ws.receive_from(timeout=10))
    # Pretend frames were lost: forget them, then ask for catch-up as app.js does.
    page.last_seq -= 2
    page.tail = page.tail[:0]
    await ws.send_to(text_data=json.dumps({"type": "catchup", "message": short}))
    while True:
        frame = await ws.receive_from(timeout=10)
        if header(frame)[2] == "snap":
            page.apply(frame)
            break
    await receive_until_final(ws, page)
    await task
    message = await reload_message(assistant.id)
    assert page.answer_html == render_markdown(message.text)
    await ws.disconnect()


async def test_finished_turn_snapshot_comes_from_the_database(provider: Any, owner: Any) -> None:
    conversation, assistant = await make_turn(owner, "Quick")
    await TurnSession(assistant.id).run()
    ws = communicator(conversation.id, await session_cookie(owner))
    assert (await ws.connect())[0]
    short = assistant.id.hex[:12]
    await ws.send_to(text_data=json.dumps({"type": "catchup", "message": short}))
    frame = await ws.receive_from(timeout=5)
    assert header(frame)[:2] == (short, (await reload_message(assistant.id)).seq)
    assert "Thought for" in frame
    await ws.disconnect()
