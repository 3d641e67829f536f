"""Just enough HTTP/1.1 for the offline model server: a buffered connection and request parsing
(keep-alive, ``Expect: 100-continue``, Content-Length and chunked request bodies).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class Connection:
    """A client connection: its own read buffer, so bytes read while watching are kept."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.streaming = False
        self.disconnected = False

    async def fill(self) -> bool:
        """Read more bytes; False at end of stream (the client closed or reset)."""
        try:
            data = await self.reader.read(65536)
        except ConnectionError:
            data = b""
        self.buffer += data
        return bool(data)

    async def read_line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > _MAX_HEAD:
                raise BadRequest(431, "line too long")
            if not await self.fill():
                raise ConnectionResetError("client closed mid-request")
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self.fill():
                raise ConnectionResetError("client closed mid-request")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_request(self) -> Request | None:
        """The next request, or None when the client closed the connection between requests."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0 or self.buffer.startswith(b"\r\n"):
            if self.buffer.startswith(b"\r\n"):  # stray CRLFs between requests are allowed
                del self.buffer[:2]
                continue
            if len(self.buffer) > _MAX_HEAD:
                raise BadRequest(431, "request head too large")
            if not await self.fill():
                if self.buffer:
                    raise ConnectionResetError("client closed mid-request")
                return None
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest(400, "malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise BadRequest(400, "malformed header line")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = (
            "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        )
        if headers.get("expect", "").lower() == "100-continue":
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked()
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise BadRequest(400, "bad Content-Length") from None
            if not 0 <= length <= _MAX_BODY:
                raise BadRequest(413, "request body too large")
            body = await self.read_exactly(length)
        return Request(method, target.split("?", 1)[0], headers, body, keep_alive)

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            try:
                size = int((await self.read_line()).split(b";", 1)[0], 16)
            except ValueError:
                raise BadRequest(400, "bad chunk size") from None
            if size == 0:
                while await self.read_line():  # trailers, up to the empty line
                    pass
                return bytes(body)
            body += await self.read_exactly(size)
            await self.read_line()
            if len(body) > _MAX_BODY:
                raise BadRequest(413, "request body too large")
