"""Channel-layer events: their shapes, and the functions that publish them.

The channel layer is at-most-once: every frame carries the message's sequence number, and the
database (or the live runner) is asked for a snapshot when a client sees a gap.
"""

from __future__ import annotations

from typing import Literal, TypedDict

from channels.layers import BaseChannelLayer


class TurnFrame(TypedDict):
    """An HTML frame for htmx's ws extension; `seq` orders the frames of one message."""

    type: Literal["turn.frame"]
    message: str
    seq: int
    html: str


class TurnSnapshot(TypedDict):
    """The whole current state of a live message, equal to the effect of frames 0..seq."""

    type: Literal["turn.snapshot"]
    message: str
    seq: int
    html: str


class SnapshotRequest(TypedDict):
    type: Literal["snapshot.request"]
    reply_channel: str


class TurnStop(TypedDict):
    type: Literal["turn.stop"]


async def publish_frame(
    layer: BaseChannelLayer, group: str, message: str, seq: int, html: str
) -> None:
    """Send one frame to every viewer of a conversation."""
    event: TurnFrame = {"type": "turn.frame", "message": message, "seq": seq, "html": html}
    await layer.group_send(group, event)


async def publish_snapshot(
    layer: BaseChannelLayer, channel: str, message: str, seq: int, html: str
) -> None:
    """Answer one consumer's snapshot request."""
    event: TurnSnapshot = {"type": "turn.snapshot", "message": message, "seq": seq, "html": html}
    await layer.send(channel, event)


async def publish_snapshot_request(
    layer: BaseChannelLayer, runner: str, reply_channel: str
) -> None:
    event: SnapshotRequest = {"type": "snapshot.request", "reply_channel": reply_channel}
    await layer.send(runner, event)


async def publish_stop(layer: BaseChannelLayer, runner: str) -> None:
    event: TurnStop = {"type": "turn.stop"}
    await layer.send(runner, event)


def frame_header(message: str, seq: int, kind: Literal["snap", "d"]) -> str:
    """The comment the page script reads before htmx swaps: message, seq and frame kind.

    `snap` frames replace whole elements and reset the client's seq; `d` frames append and
    must arrive in order.
    """
    return f"<!--gb:{message}:{seq}:{kind}-->"
