"""The benchmark's browser stand-in: logs in over HTTP, opens conversations, watches sockets.

Written to be cheap, because it shares the machine's cores with the server: one asyncio
process, raw bytes from the socket (no UTF-8 decoding), and per frame only the header
(`<!--gb:<short>:<seq>:<kind>-->`) is parsed plus two substring tests.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.db import PASSWORD, USERNAME

_REASONING = b'<span id="r-'
_FOOTER = b'class="msg-foot"'
_CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def ws_header_bytes(payload: int) -> int:
    """Size of an unmasked server-to-client WebSocket frame header for this payload."""
    return 2 if payload < 126 else 4 if payload < 65536 else 10


@dataclass(slots=True)
class Watch:
    """What one client saw of the one message streamed in its conversation."""

    conversation: str
    keep_frames: bool = False
    short: str = ""
    t_post: float = 0.0
    wall0: float = 0.0  # time.time() - time.perf_counter() at the POST: perf -> wall clock
    t_post_done: float = 0.0
    post_status: int = 0
    t_first_frame: float = 0.0
    t_first_reasoning: float = 0.0
    t_last_delta: float = 0.0
    t_final: float = 0.0
    last_seq: int = -1
    frames: int = 0
    delta_frames: int = 0
    snapshots: int = 0
    payload_bytes: int = 0
    wire_bytes: int = 0
    lost: int = 0
    lost_at: list[tuple[int, int]] = field(default_factory=list)  # (first missing seq, count)
    duplicated: int = 0
    gaps: list[float] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    closed_early: str = ""

    def feed(self, data: bytes, now: float) -> bool:
        """Account for one frame; returns True on the message's final frame."""
        end = data.find(b"-->", 7)
        short, seq_text, kind = data[7:end].split(b":")
        seq = int(seq_text)
        size = len(data)
        self.frames += 1
        self.payload_bytes += size
        self.wire_bytes += size + ws_header_bytes(size)
        if self.keep_frames:
            self.raw.append(data)
        if not self.short:
            self.short = short.decode()
            self.t_first_frame = now
        if kind == b"snap":
            # A snapshot replaces the message: it resets the client's position (never back).
            self.snapshots += 1
            self.last_seq = max(self.last_seq, seq)
            return False
        self.delta_frames += 1
        if seq <= self.last_seq:
            self.duplicated += 1
            return False
        if seq != self.last_seq + 1:
            self.lost += seq - self.last_seq - 1
            self.lost_at.append((self.last_seq + 1, seq - self.last_seq - 1))
        self.last_seq = seq
        if self.t_last_delta:
            self.gaps.append(now - self.t_last_delta)
        self.t_last_delta = now
        if not self.t_first_reasoning and _REASONING in data:
            self.t_first_reasoning = now
        if _FOOTER in data:
            self.t_final = now
            return True
        return False


class Session:
    """One logged-in user over HTTP (cookie + CSRF token), as a browser tab would be."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.ws_base = base_url.replace("http://", "ws://")
        self.http = httpx.AsyncClient(
            base_url=base_url,
            follow_redirects=False,
            timeout=httpx.Timeout(120.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )
        self.csrf = ""
        self.cookie = ""

    async def login(self) -> None:
        page = await self.http.get("/login/")
        page.raise_for_status()
        found = _CSRF_INPUT.search(page.text)
        assert found, "no CSRF token on the login page"
        response = await self.http.post(
            "/login/",
            data={
                "username": USERNAME,
                "password": PASSWORD,
                "csrfmiddlewaretoken": found.group(1),
                "next": "/",
            },
            headers={"Referer": f"{self.base_url}/login/"},
        )
        if response.status_code != 302 or "sessionid" not in self.http.cookies:
            raise RuntimeError(f"login failed: {response.status_code} {response.text[:300]}")
        self.csrf = self.http.cookies["csrftoken"]
        self.cookie = "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())

    async def new_conversation(self) -> str:
        response = await self.http.post("/c/new/", headers={"X-CSRFToken": self.csrf})
        location = response.headers.get("location", "")
        if response.status_code != 302 or not location.startswith("/c/"):
            raise RuntimeError(f"POST /c/new/ answered {response.status_code}: {location!r}")
        return location.strip("/").split("/")[1]

    async def open_socket(self, conversation: str) -> ClientConnection:
        return await connect(
            f"{self.ws_base}/ws/c/{conversation}/",
            origin=self.base_url,  # type: ignore[arg-type]
            additional_headers={"Cookie": self.cookie},
            # daphne (autobahn) does not negotiate permessage-deflate; asking would change
            # nothing but make the bytes counted here depend on it if it ever did.
            compression=None,
            max_size=None,
            ping_interval=None,
            open_timeout=120,
            close_timeout=2,
        )

    async def send(self, watch: Watch, text: str) -> None:
        watch.wall0 = time.time() - time.perf_counter()
        watch.t_post = time.perf_counter()
        response = await self.http.post(
            f"/c/{watch.conversation}/send/",
            data={"text": text},
            headers={"X-CSRFToken": self.csrf, "HX-Request": "true"},
        )
        watch.t_post_done = time.perf_counter()
        watch.post_status = response.status_code

    async def aclose(self) -> None:
        await self.http.aclose()


async def receive(ws: ClientConnection, watch: Watch) -> None:
    """Read frames until the message's final frame (or the socket closes)."""
    clock = time.perf_counter
    try:
        while True:
            data = await ws.recv(decode=False)
            if watch.feed(data, clock()):
                return
    except ConnectionClosed as exc:
        watch.closed_early = f"socket closed: {exc}"


def first_reasoning_chunk(chunk: Any) -> bool:
    """Whether an openai SDK chunk carries reasoning (Kimi's `reasoning_content`)."""
    if not chunk.choices:
        return False
    delta = chunk.choices[0].delta
    return bool(getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None))
