"""Test helpers: create turns, watch a conversation's frames, read frames like a browser."""

from __future__ import annotations

import asyncio
import html
import re
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.test import Client

from chat import actions
from chat.models import Conversation, Message

HEADER = re.compile(r"^<!--gb:([0-9a-f]+):(\d+):(snap|d)-->")


def header(frame: str) -> tuple[str, int, str]:
    match = HEADER.match(frame)
    assert match, f"frame without header: {frame[:80]!r}"
    return match.group(1), int(match.group(2)), match.group(3)


@sync_to_async
def make_turn(
    user: Any, text: str, conversation: Conversation | None = None
) -> tuple[Conversation, Message]:
    conversation = conversation or actions.do_create_conversation(user)
    assistant = actions.do_send_message(conversation, text)
    return conversation, assistant


@sync_to_async
def reload_message(message_id: Any) -> Message:
    return Message.objects.get(id=message_id)


@sync_to_async
def session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


class FrameRecorder:
    """Joins a conversation's group like a consumer does and records every frame as it comes."""

    def __init__(self, conversation: Conversation) -> None:
        self.group = conversation.group_name
        self.frames: list[str] = []
        self.layer = get_channel_layer()
        self.channel = ""
        self.final = asyncio.Event()
        self.arrived = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FrameRecorder:
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(self.group, self.channel)
        self.task = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.layer.group_discard(self.group, self.channel)

    async def _receive(self) -> None:
        while True:
            event = await self.layer.receive(self.channel)
            self.frames.append(event["html"])
            self.arrived.set()
            if 'class="msg-foot"' in event["html"] and header(event["html"])[2] == "d":
                self.final.set()

    async def wait_for(self, text: str, timeout: float = 10.0) -> None:
        """Wait until some frame contains `text`."""

        async def seen() -> None:
            while not any(text in frame for frame in self.frames):
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(seen(), timeout)

    async def until_final(self, timeout: float = 10.0) -> list[str]:
        """Wait for the frame that carries the finished message's footer."""
        await asyncio.wait_for(self.final.wait(), timeout)
        return self.frames


@dataclass
class BrowserModel:
    """What a page shows for one message after applying frames, the way app.js + htmx do."""

    short: str
    last_seq: int = -1
    reasoning: str = ""
    blocks: list[str] = field(default_factory=list)
    tail: str = ""
    duplicates: int = 0
    gaps: int = 0

    def apply(self, frame: str) -> None:
        short, seq, kind = header(frame)
        if short != self.short:
            return
        if kind == "snap":
            if seq < self.last_seq:
                return
            self.last_seq = seq
            self.reasoning = "".join(
                html.unescape(t)
                for t in re.findall(r'<div class="reasoning" id="r-[^"]+">([^<]*)</div>', frame)
            )
            found = re.search(
                rf'<div id="b-{short}">(.*?)</div><span id="t-{short}" class="tail">([^<]*)</span>',
                frame,
                re.S,
            )
            assert found, "snapshot without answer"
            self.blocks = [found.group(1)] if found.group(1) else []
            self.tail = html.unescape(found.group(2))
            return
        if seq <= self.last_seq:
            self.duplicates += 1
            return
        if seq != self.last_seq + 1:
            self.gaps += 1
            return
        self.last_seq = seq
        for text in re.findall(
            rf'<span id="r-{short}-\d+" hx-swap-oob="beforeend">([^<]*)</span>', frame
        ):
            self.reasoning += html.unescape(text)
        pattern = (
            rf'<div id="b-{short}" hx-swap-oob="beforeend">(.*?)</div>'
            rf'<span id="t-{short}" hx-swap-oob="innerHTML">([^<]*)</span>'
            rf'|<span id="t-{short}" hx-swap-oob="beforeend">([^<]*)</span>'
        )
        for block, new_tail, appended in re.findall(pattern, frame, re.S):
            if appended:
                self.tail += html.unescape(appended)
            else:
                if block:
                    self.blocks.append(block)
                self.tail = html.unescape(new_tail)

    @property
    def answer_html(self) -> str:
        return "".join(self.blocks)
