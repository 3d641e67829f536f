"""Offline model server: a real HTTP server that speaks Kimi K2 Thinking's streaming protocol.

Glassbox runs, is tested and is benchmarked against this server when no provider key is set, so
the whole client stack (the openai SDK over httpx, our stream parser, the turn loop) meets the same
wire format as Moonshot's API (see docs/kimi-protocol.md). It is plain asyncio streams with just
enough HTTP/1.1: keep-alive, Content-Length and chunked request bodies, and SSE responses sent with
``Transfer-Encoding: chunked`` so a connection survives a finished stream and a truncated stream is
visible to the client as an incomplete body.

Endpoints: ``POST /v1/chat/completions`` (``stream`` true: SSE; false: one ``chat.completion``),
``GET /v1/models``, ``GET /health``. Any model name and any bearer key are accepted.

Output is deterministic and refers to the question (the last user message). Tokens written
``!name`` or ``!name:value`` in that message script the behaviour and are stripped from the
quoted question:

==========================  =====================================================================
``!think:N``                reasoning length in tokens (default 60)
``!words:N``                answer length in tokens (default 120); long answers are many Markdown
                            blocks separated by blank lines
``!rate:N``                 tokens per second for this request (0: as fast as possible)
``!field:reasoning``        reasoning in ``delta.reasoning`` (vLLM, OpenRouter), not in
                            ``delta.reasoning_content``
``!field:think``            reasoning inline as ``<think>…</think>`` in ``content``, the tags
                            split across chunks
``!echo:TEXT``              the answer is exactly TEXT (the rest of the line)
``!error:NAME``             fail with the HTTP status and error body of ``ERRORS[NAME]``
``!fail_times:N``           apply ``!error``/``!error_midstream``/``!cut``/``!hang`` only to the
                            first N requests with this exact last user message (retries succeed)
``!error_midstream``        after some reasoning and content, a ``data:`` line with a top-level
                            ``error`` object, then the stream ends without ``[DONE]``
``!cut``                    close the connection after some content (no finish, no ``[DONE]``)
``!malformed``              one ``data: {not json`` line mid-stream; the stream goes on
``!comments``               ``: OPENROUTER PROCESSING`` comment lines
``!hang``                   reason slowly forever, until the client disconnects
``!tool:NAME:{json}``       call tool NAME with these arguments (repeat for parallel calls)
``!ids:vllm``               tool-call ids ``functions.NAME:N`` instead of Moonshot's ``NAME:N``
``!badjson``                the (first) tool call's arguments are not valid JSON
``!unknown_tool``           also call a tool named ``does_not_exist``
``!loop:N``                 call tools (the ``!tool`` specs, else the first declared tool) every
                            step until the request holds N tool results, then answer
==========================  =====================================================================

``max_tokens`` (or ``max_completion_tokens``) caps reasoning + answer and ends the step with
``finish_reason: "length"``; without it there is no cap.

Like Moonshot, the server rejects with 400 ``invalid_request_error``: an assistant message with
``tool_calls`` but no ``reasoning_content``, a tool message whose ``tool_call_id`` matches no
earlier call byte for byte, ``tool_choice`` "required" or a named function, ``"thinking": true``,
and prompt + ``max_tokens`` beyond the 262,144-token context.

The package: `http` reads connections and requests, `script` parses the directives and
generates the text, `protocol` holds Moonshot's request rules, errors and chunk format, and
this module serves it all (`OfflineModelServer`, `start_in_thread`, `main`).

Run it with ``python -m agents.offline_server --host 127.0.0.1 --port 8765 --rate 40``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from .http import BadRequest, Connection, Request
from .protocol import (
    CONTEXT_LIMIT,
    CUT,
    ERRORS,
    PACED,
    PLAIN,
    SLOW,
    UNLIMITED,
    Step,
    check_request,
    error_body,
    message_chars,
    message_text,
    sse_events,
)
from .script import (
    Directives,
    answer_tokens,
    parse_directives,
    plan_calls,
    reasoning_tokens,
    split_tokens,
)

__all__ = [
    "CONTEXT_LIMIT",
    "DEFAULT_MODEL",
    "ERRORS",
    "HANG_INTERVAL",
    "Directives",
    "OfflineModelServer",
    "ThreadedServer",
    "main",
    "parse_directives",
    "split_tokens",
    "start_in_thread",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "kimi-k2-thinking"
# Reasoning pace once a !hang stream has used up its normal reasoning: slow but never silent.
HANG_INTERVAL = 0.5

# Above this many unsent bytes a stream waits for the socket (back-pressure); below it, draining
# on every token would only add an await per write.
_HIGH_WATER = 64 * 1024
_REQUEST_LOG_LIMIT = 10_000
# A stream that is behind schedule (or unpaced) still yields to the loop this often.
_YIELD_EVERY = 64


# --- the server -----------------------------------------------------------------------------


class OfflineModelServer:
    """The offline Kimi K2 Thinking endpoint, served on asyncio from `start()` to `stop()`.

    For tests: `requests` holds every JSON body received, in order; `disconnects` counts streams
    ended by their client leaving (`wait_for_disconnects` waits for it); `active_streams` and
    `connections` (accepted so far) show load and keep-alive at work.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rate: float = 40.0,
        model: str = DEFAULT_MODEL,
    ) -> None:
        self.host = host
        self.port = port
        self.rate = rate
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.disconnects = 0
        self.active_streams = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._fail_counts: dict[str, int] = {}
        self._prefixes: set[bytes] = set()
        self._disconnect_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._stopping = False

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    async def start(self) -> None:
        """Bind and start accepting connections; `port` is the real one afterwards."""
        self._stopping = False
        # A deep backlog: the benchmark opens hundreds of streams at once.
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, backlog=2048, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection, streams included."""
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def wait_for_disconnects(self, count: int, timeout: float = 5.0) -> None:
        """Wait until `count` streams have ended because their client went away."""
        if self.disconnects >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._disconnect_waiters.append((count, future))
        await asyncio.wait_for(future, timeout)

    def _count_disconnect(self) -> None:
        self.disconnects += 1
        for count, future in list(self._disconnect_waiters):
            if self.disconnects >= count:
                self._disconnect_waiters.remove((count, future))
                if not future.done():
                    future.set_result(None)

    # --- connections ---

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        conn = Connection(reader, writer)
        try:
            while True:
                try:
                    request = await conn.read_request()
                except BadRequest as exc:
                    body = error_body("invalid_request_error", str(exc))
                    await self._send(conn, exc.status, body, keep_alive=False)
                    return
                if request is None or not await self._route(conn, request):
                    return
        except ConnectionError:
            pass
        except Exception:
            # A bug here must not look like a provider outage that retries would fix: say so.
            logger.exception("offline model server failed on a request")
            body = error_body("server_error", "offline model server bug; see its log")
            with contextlib.suppress(ConnectionError):
                await self._send(conn, 500, body, keep_alive=False)
        finally:
            self._tasks.discard(task)
            # On shutdown do not wait for unsent bytes to reach a client that may never read.
            if self._stopping:
                writer.transport.abort()
            else:
                writer.close()

    async def _send(
        self,
        conn: Connection,
        status: int,
        body: bytes,
        *,
        keep_alive: bool = True,
        headers: tuple[str, ...] = (),
    ) -> bool:
        head = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            "Server: glassbox-offline",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            *headers,
        ]
        conn.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await conn.writer.drain()
        return keep_alive

    async def _route(self, conn: Connection, request: Request) -> bool:
        """Answer one request; returns whether the connection stays open."""
        path = request.path.rstrip("/")
        keep = request.keep_alive
        if path in ("/v1/chat/completions", "/chat/completions"):
            if request.method != "POST":
                body = error_body("invalid_request_error", "use POST")
                return await self._send(conn, 405, body, keep_alive=keep, headers=("Allow: POST",))
            return await self._chat(conn, request)
        if path in ("/health", "/v1/health"):
            payload = b'{"status":"ok"}'
        elif path in ("/v1/models", "/models"):
            model = {"id": self.model, "object": "model", "created": 0, "owned_by": "glassbox"}
            payload = json.dumps({"object": "list", "data": [model]}).encode()
        else:
            body = error_body("resource_not_found_error", f"no such endpoint: {request.path}")
            return await self._send(conn, 404, body, keep_alive=keep)
        if request.method != "GET":
            body = error_body("invalid_request_error", "use GET")
            return await self._send(conn, 405, body, keep_alive=keep, headers=("Allow: GET",))
        return await self._send(conn, 200, payload, keep_alive=keep)

    async def _chat(self, conn: Connection, request: Request) -> bool:
        keep = request.keep_alive
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            error = error_body("invalid_request_error", "Invalid request: body is not JSON")
            return await self._send(conn, 400, error, keep_alive=keep)
        self.requests.append(body)
        if len(self.requests) > _REQUEST_LOG_LIMIT:  # long benchmark runs: keep memory bounded
            del self.requests[0]
        messages = body.get("messages")
        users = [m for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
        last_user = message_text(users[-1].get("content")) if users else ""
        d = parse_directives(last_user)
        failing = True
        if d.fail_times is not None:
            seen = self._fail_counts[last_user] = self._fail_counts.get(last_user, 0) + 1
            failing = seen <= d.fail_times
        if not failing:
            d.error = None
            d.faults.clear()
        if d.error is not None:
            return await self._send_error(conn, d.error, keep)
        problem = check_request(body)
        if problem is not None:
            error = error_body("invalid_request_error", problem)
            return await self._send(conn, 400, error, keep_alive=keep)
        step = self._plan_step(body, d)
        if step.prompt_tokens + (step.max_tokens or 0) > CONTEXT_LIMIT:
            return await self._send_error(conn, "context_length", keep)
        if body.get("stream") is True:
            return await self._stream(conn, step, keep)
        return await self._complete(conn, step, keep)

    async def _send_error(self, conn: Connection, name: str, keep_alive: bool) -> bool:
        if name not in ERRORS:
            message = f"unknown !error:{name}; known: {', '.join(ERRORS)}"
            body = error_body("invalid_request_error", message)
            return await self._send(conn, 400, body, keep_alive=keep_alive)
        status, error_type, message = ERRORS[name]
        headers = ("Retry-After: 1",) if name == "rate_limit" else ()
        body = error_body(error_type, message)
        return await self._send(conn, status, body, keep_alive=keep_alive, headers=headers)

    def _plan_step(self, body: dict[str, Any], d: Directives) -> Step:
        messages: list[dict[str, Any]] = body["messages"]
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        tail = messages[last_user + 1 :]
        calls = plan_calls(d, body, tail)
        earlier = sum(
            len(m.get("tool_calls") or []) for m in messages if m.get("role") == "assistant"
        )
        prefix = "functions." if d.vllm_ids else ""
        tool_calls = [
            (f"{prefix}{name}:{earlier + n}", name, arguments)
            for n, (name, arguments) in enumerate(calls)
        ]
        question = d.question
        topic = " ".join(question.split()[:6])[:60] or "Your question"
        intro = f"The user asks: «{question[:80]}». Let me think about {topic}."
        results = [
            f"`{m.get('name') or m.get('tool_call_id')}` returned "
            f"“{' '.join(message_text(m.get('content')).split())[:80]}”"
            for m in tail
            if m.get("role") == "tool"
        ]
        if results:
            intro += f" The tool results are in: {'; '.join(results)}."
        if tool_calls:
            names = ", ".join(f"`{name}`" for _, name, _ in tool_calls)
            intro += f" I need {names} for this, so I will call it."
        reasoning = reasoning_tokens(intro)
        if "hang" not in d.faults:
            reasoning = itertools.islice(reasoning, d.think)
        if tool_calls:
            content: Iterator[str] = iter(())
        elif d.echo is not None:
            content = iter(split_tokens(d.echo))
        else:
            lead = f"Tool results: {'; '.join(results)}." if results else ""
            content = answer_tokens(question, topic, d.words, lead)
        prompt, cached = self._prompt_tokens(messages)
        stream_options = body.get("stream_options")
        model = body.get("model")
        return Step(
            model=model if isinstance(model, str) and model else self.model,
            reasoning_field=d.reasoning_field,
            reasoning=reasoning,
            content=content,
            tool_calls=tool_calls,
            max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
            prompt_tokens=prompt,
            cached_tokens=cached,
            include_usage=isinstance(stream_options, dict)
            and stream_options.get("include_usage") is True,
            rate=self.rate if d.rate is None else d.rate,
            think=d.think,
            faults=d.faults,
            malformed=d.malformed,
            comments=d.comments,
        )

    def _prompt_tokens(self, messages: list[dict[str, Any]]) -> tuple[int, int]:
        """Estimate prompt tokens (chars / 4) and how many a prefix cache would have served.

        A message prefix seen byte for byte in an earlier request counts as cached, like
        Moonshot's context cache, so a client that resends history unchanged sees cache hits.
        """
        digest = hashlib.sha256()
        chars = cached_chars = 0
        seen: list[bytes] = []
        for message in messages:
            digest.update(json.dumps(message, sort_keys=True).encode())
            chars += message_chars(message)
            prefix = digest.digest()
            if prefix in self._prefixes:
                cached_chars = chars
            seen.append(prefix)
        if len(self._prefixes) > 100_000:  # bounded memory for long benchmark runs
            self._prefixes.clear()
        self._prefixes.update(seen)
        return max(1, -(-chars // 4)), cached_chars // 4

    # --- responses ---

    async def _stream(self, conn: Connection, step: Step, keep_alive: bool) -> bool:
        """Send the step as SSE, watching the socket so a client that leaves stops it at once."""
        task = asyncio.current_task()
        assert task is not None
        self.active_streams += 1
        conn.streaming = True
        watcher = asyncio.create_task(self._watch(conn, task))
        try:
            connection = "keep-alive" if keep_alive else "close"
            head = (
                "HTTP/1.1 200 OK\r\nServer: glassbox-offline\r\n"
                "Content-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
                f"Transfer-Encoding: chunked\r\nConnection: {connection}\r\n\r\n"
            )
            conn.writer.write(head.encode())
            return await self._write_events(conn, step) and keep_alive
        except asyncio.CancelledError:
            if not conn.disconnected:
                raise
            task.uncancel()
            return False
        except ConnectionError:
            conn.disconnected = True
            return False
        finally:
            conn.streaming = False
            self.active_streams -= 1
            watcher.cancel()
            await asyncio.wait({watcher})
            if conn.disconnected:
                self._count_disconnect()

    async def _watch(self, conn: Connection, stream: asyncio.Task[None]) -> None:
        """Read while a stream is sent: end of input means the client is gone."""
        while await conn.fill():
            pass  # a pipelined request stays in the buffer for after the stream
        if conn.streaming:
            conn.disconnected = True
            stream.cancel()

    async def _write_events(self, conn: Connection, step: Step) -> bool:
        """Write each event as its own HTTP chunk, token i due at start + i / rate (no drift).

        Chunks that fall due together (no rate, or a late wake-up on a busy machine) go out in
        one send: still one event per token for the client, far fewer system calls for us.
        """
        writer = conn.writer
        transport = writer.transport
        loop = asyncio.get_running_loop()
        interval = 1.0 / step.rate if step.rate > 0 else 0.0
        start = loop.time()
        slot = 0
        pending: list[bytes] = []
        for text, pacing in sse_events(step):
            if pacing != PLAIN:
                if pacing == PACED:
                    delay = start + slot * interval - loop.time() if interval else 0.0
                    wait = delay > 0 or slot % _YIELD_EVERY == 0
                    slot += 1
                else:
                    delay, wait = (HANG_INTERVAL if pacing == SLOW else 0.0), True
                if wait:
                    writer.write(b"".join(pending))
                    pending.clear()
                    if transport.is_closing():
                        raise ConnectionResetError("client went away")
                    if pacing == CUT:
                        writer.close()  # sends what is buffered, then FIN before the last chunk
                        return False
                    if transport.get_write_buffer_size() > _HIGH_WATER:
                        await writer.drain()
                    await asyncio.sleep(max(delay, 0.0))
            # Every event is ASCII (JSON with ensure_ascii), so characters count as bytes.
            pending.append(f"{len(text):x}\r\n{text}\r\n".encode("ascii"))
        pending.append(b"0\r\n\r\n")
        writer.write(b"".join(pending))
        await writer.drain()
        return True

    async def _complete(self, conn: Connection, step: Step, keep_alive: bool) -> bool:
        """Answer without streaming: one chat.completion, at once (no pacing)."""
        if "hang" in step.faults:
            while await conn.fill():
                pass
            self._count_disconnect()
            return False
        if "cut" in step.faults:
            return False
        if "error_midstream" in step.faults:
            return await self._send_error(conn, "server", keep_alive)
        budget = UNLIMITED if step.max_tokens is None else step.max_tokens
        reasoning = list(itertools.islice(step.reasoning, budget + 1))
        content = list(itertools.islice(step.content, max(0, budget - len(reasoning)) + 1))
        finish = "tool_calls" if step.tool_calls else "stop"
        if len(reasoning) > budget:
            reasoning, content, finish = reasoning[:budget], [], "length"
        elif len(reasoning) + len(content) > budget:
            content, finish = content[: budget - len(reasoning)], "length"
        calls = step.tool_calls if finish == "tool_calls" else []
        message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
        if step.reasoning_field == "think":
            if reasoning:
                message["content"] = f"<think>{''.join(reasoning)}</think>{message['content']}"
        else:
            message[step.reasoning_field] = "".join(reasoning)
        if calls:
            message["tool_calls"] = [
                {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                for i, n, a in calls
            ]
        completion = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": step.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": json.loads(step.usage(len(reasoning), len(content), bool(calls))),
        }
        return await self._send(conn, 200, json.dumps(completion).encode(), keep_alive=keep_alive)


# --- running it -----------------------------------------------------------------------------


class ThreadedServer:
    """An `OfflineModelServer` on its own event loop in a daemon thread (for sync callers)."""

    def __init__(
        self, server: OfflineModelServer, loop: asyncio.AbstractEventLoop, thread: threading.Thread
    ) -> None:
        self.server = server
        self._loop = loop
        self._thread = thread

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.server.requests

    def wait_for_disconnects(self, count: int, timeout: float = 5.0) -> None:
        """Block until `count` client disconnects were seen (see the server's method)."""
        waiter = self.server.wait_for_disconnects(count, timeout)
        asyncio.run_coroutine_threadsafe(waiter, self._loop).result(timeout + 1)

    def stop(self) -> None:
        """Stop the server and its thread; calling it twice is harmless."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ThreadedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_in_thread(
    *, rate: float = 40.0, host: str = "127.0.0.1", port: int = 0, model: str = DEFAULT_MODEL
) -> ThreadedServer:
    """Start a server in a daemon thread and return once it listens."""
    server = OfflineModelServer(host, port, rate=rate, model=model)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="offline-model-server", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        raise
    return ThreadedServer(server, loop, thread)


async def _serve(host: str, port: int, rate: float, model: str) -> None:
    server = OfflineModelServer(host, port, rate=rate, model=model)
    await server.start()
    print(f"offline model server listening on {server.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    """Command line: serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m agents.offline_server",
        description="Serve a deterministic Kimi K2 Thinking look-alike over HTTP.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--rate", type=float, default=40.0, help="tokens per second (0: no limit)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model id listed by /v1/models")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.rate, args.model))
    return 0
