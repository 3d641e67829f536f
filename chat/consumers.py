"""The conversation socket: a thin pipe from the channel layer to one browser tab.

On connect (and on a client's catch-up request) the in-flight message's state comes from its
runner, or from the database when the runner is gone; live frames are held back until that
snapshot is sent, and frames it already covers are dropped: no gap, no duplicate.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from chat import events
from chat.access import find_conversation_for_user
from chat.models import Conversation, Message, MessageStatus
from chat.presentation import message_view, render_assistant, render_user

logger = logging.getLogger(__name__)

SNAPSHOT_TIMEOUT = 2.0


def _live_message(conversation: Conversation) -> Message | None:
    return (
        conversation.messages.filter(status=MessageStatus.STREAMING)
        .select_related("reply_to")
        .order_by("-created_at")
        .first()
    )


def _db_snapshot(message_id: Any) -> tuple[str, int, str]:
    message = Message.objects.select_related("reply_to").get(id=message_id)
    view = message_view(message, message.steps.all(), message.tool_calls.all())
    user_html = render_user(message.reply_to, oob=True) if message.reply_to else ""
    html = events.frame_header(view.short_id, view.seq, "snap") + user_html
    return html + render_assistant(view, oob=True), view.seq, view.short_id


class ConversationConsumer(AsyncWebsocketConsumer):
    conversation: Conversation
    group: str

    async def connect(self) -> None:
        user = self.scope.get("user")
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        conversation = (
            await sync_to_async(find_conversation_for_user)(user, conversation_id)
            if user is not None
            else None
        )
        if conversation is None:
            # Refuse the handshake: outsiders and anonymous users learn nothing.
            await self.close(code=4404)
            return
        self.conversation = conversation
        self.group = conversation.group_name
        # Frames for a message whose snapshot is on its way are held here (message -> frames).
        self.held: dict[str, list[events.TurnFrame]] = {}
        self.pending_snapshots: dict[str, asyncio.TimerHandle] = {}
        # Until we know whether a turn is live, hold every frame: one may be streaming.
        self.connecting: list[events.TurnFrame] | None = []
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        live = await sync_to_async(_live_message)(conversation)
        early, self.connecting = self.connecting, None
        if live is not None:
            short = live.id.hex[:12]
            self.held[short] = [f for f in early if f["message"] == short]
            early = [f for f in early if f["message"] != short]
            await self._request_snapshot(short, live)
        for frame in early:
            await self.send(text_data=frame["html"])

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
        for handle in getattr(self, "pending_snapshots", {}).values():
            handle.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            request = json.loads(text_data or "")
        except ValueError:
            return
        if not isinstance(request, dict) or request.get("type") != "catchup":
            return
        short = str(request.get("message", ""))[:12]
        if short in self.pending_snapshots:
            return
        live = await sync_to_async(self._find_message)(short)
        if live is not None:
            await self._request_snapshot(short, live)

    def _find_message(self, short: str) -> Message | None:
        for message in self.conversation.messages.filter(role=Message.Role.ASSISTANT).order_by(
            "-created_at"
        )[:50]:
            if message.id.hex.startswith(short):
                return message
        return None

    async def _request_snapshot(self, short: str, message: Message) -> None:
        self.held.setdefault(short, [])
        loop = asyncio.get_running_loop()
        if message.status == MessageStatus.STREAMING and message.runner_channel:
            self.pending_snapshots[short] = loop.call_later(
                SNAPSHOT_TIMEOUT,
                lambda: asyncio.ensure_future(self._snapshot_from_db(short, message)),
            )
            await events.publish_snapshot_request(
                self.channel_layer, message.runner_channel, self.channel_name
            )
        else:
            await self._snapshot_from_db(short, message)

    async def _snapshot_from_db(self, short: str, message: Message) -> None:
        html, seq, _ = await sync_to_async(_db_snapshot)(message.id)
        await self._send_snapshot(short, seq, html)

    async def _send_snapshot(self, short: str, seq: int, html: str) -> None:
        handle = self.pending_snapshots.pop(short, None)
        if handle is not None:
            handle.cancel()
        held = self.held.pop(short, None)
        if held is None:
            return  # already answered (a late runner reply after the database fallback)
        await self.send(text_data=html)
        for frame in held:
            if frame["seq"] > seq:
                await self.send(text_data=frame["html"])

    # --- channel-layer handlers ---------------------------------------------------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Frames touch no database: skip Channels' connection clean-up before each handler,
        # which costs a thread hop for every frame to every viewer.
        if message["type"] == "turn.frame":
            await self.turn_frame(message)  # type: ignore[arg-type]
        elif message["type"] == "turn.snapshot":
            await self.turn_snapshot(message)  # type: ignore[arg-type]
        else:
            await super().dispatch(message)

    async def turn_frame(self, event: events.TurnFrame) -> None:
        if self.connecting is not None:
            self.connecting.append(event)
            return
        held = self.held.get(event["message"])
        if held is not None:
            held.append(event)
            return
        await self.send(text_data=event["html"])

    async def turn_snapshot(self, event: events.TurnSnapshot) -> None:
        await self._send_snapshot(event["message"], event["seq"], event["html"])
