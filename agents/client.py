"""Streaming chat completions from an OpenAI-compatible provider, one step at a time.

The openai SDK does the HTTP (connection pool, auth, error statuses), but we read the SSE
lines ourselves: its own stream decoder would choke on malformed lines and could not tell us
about error objects inside a 200 stream the way `StreamParser` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import openai

from agents.errors import ErrorKind, ProviderError, classify_http_error
from agents.stream import MalformedLine, StreamEvent, StreamParser, ToolCall, Usage

logger = logging.getLogger(__name__)

# A host that does not answer within this long is not going to; the overall `timeout` (also
# the wait between two stream reads) stays long because thinking models pause for minutes.
_CONNECT_TIMEOUT = 10.0
# What a broken connection raises while we read the body (the SDK only wraps errors raised
# before the response starts); the TLS and end-of-stream ones mirror the SDK's own list.
_TRANSPORT_ERRORS = (httpx2.RequestError, ssl.SSLError, anyio.EndOfStream)
# After `[DONE]` only the end of the HTTP body should follow. Reading it lets the connection go
# back to the pool; a server that keeps the body open past that is not waited for.
_DRAIN_TIMEOUT = 2.0


@dataclass(frozen=True)
class ProviderConfig:
    """Where and how to call the model."""

    base_url: str
    api_key: str
    model: str
    temperature: float = 1.0
    max_tokens: int = 32000
    timeout: float = 600.0
    max_retries: int = 3
    provider: str = "custom"
    label: str = ""  # shown in the UI


@dataclass(frozen=True)
class StepResult:
    """How one step (one model request) ended."""

    finish_reason: str | None
    usage: Usage | None
    tool_calls: list[ToolCall]
    malformed_lines: int


@dataclass
class _Attempt:
    output_started: bool = False
    malformed_lines: int = 0
    result: StepResult | None = None


class ProviderClient:
    """Streams steps from one configured provider; reuse it to reuse connections."""

    def __init__(
        self, config: ProviderConfig, *, backoff_base: float = 0.5, backoff_cap: float = 8.0
    ) -> None:
        self.config = config
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        # Retries are ours (they must stop once output has streamed), so the SDK's are off.
        self._openai = openai.AsyncOpenAI(
            base_url=config.base_url,
            # The SDK insists on a key; self-hosted engines and the offline server need none.
            api_key=config.api_key or "unused",
            max_retries=0,
            timeout=httpx2.Timeout(config.timeout, connect=min(config.timeout, _CONNECT_TIMEOUT)),
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._openai.close()

    async def stream_step(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None
    ) -> AsyncGenerator[StreamEvent | StepResult, None]:
        """Stream one step: its events as they arrive, then exactly one `StepResult`.

        Raises `ProviderError`. Transient failures are retried with backoff, but only while
        nothing has been yielded: after output a retry would show the user text twice.
        """
        request = self._request(messages, tools)
        failures = 0
        while True:
            attempt = _Attempt()
            try:
                async with contextlib.aclosing(self._attempt(request, attempt)) as events:
                    async for event in events:
                        yield event
            except ProviderError as exc:
                if (
                    attempt.output_started
                    or not exc.retryable
                    or failures >= self.config.max_retries
                ):
                    raise
                failures += 1
                delay = self._backoff(failures, exc.retry_after)
                logger.warning(
                    "provider %s failed (%r); retry %d of %d in %.2f s",
                    self.config.provider,
                    exc,
                    failures,
                    self.config.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            assert attempt.result is not None
            yield attempt.result
            return

    def _request(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        # No tool_choice (only "auto" is allowed with thinking on, and it is the default) and
        # no "thinking" flag: Moonshot rejects both forms the protocol notes warn about.
        request: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            request["tools"] = tools
        return request

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        # Full jitter spreads out clients that failed together; a stated wait is honoured,
        # within the cap so that a turn never hangs on one provider's say-so.
        ceiling = min(self._backoff_cap, self._backoff_base * 2 ** (failures - 1))
        delay = random.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._backoff_cap))
        return delay

    async def _attempt(
        self, request: dict[str, Any], attempt: _Attempt
    ) -> AsyncGenerator[StreamEvent, None]:
        """One HTTP request; every failure leaves it as a `ProviderError`."""
        parser = StreamParser()
        try:
            # The SDK rebuilds every message through its TypedDicts on each request (about
            # 0.7 ms a message: 0.2 s a step by step 150 of a tool loop). The history is plain
            # JSON already, so it rides in `extra_body`, which the SDK sends as it is.
            fields = dict(request)
            verbatim = {key: fields.pop(key) for key in ("messages", "tools") if key in fields}
            async with self._openai.chat.completions.with_streaming_response.create(
                **fields, messages=[], extra_body=verbatim
            ) as response:
                lines = response.iter_lines()
                async for line in lines:
                    for event in parser.feed_line(line):
                        if isinstance(event, MalformedLine):
                            attempt.malformed_lines += 1
                            logger.warning("skipped a malformed stream line: %s", event.reason)
                        attempt.output_started = True
                        yield event
                    if parser.done:
                        break
                if parser.done:
                    with contextlib.suppress(TimeoutError, *_TRANSPORT_ERRORS):
                        async with asyncio.timeout(_DRAIN_TIMEOUT):
                            async for _ in lines:
                                pass
        except openai.APIStatusError as exc:
            raise classify_http_error(exc.status_code, exc.body, exc.response.headers) from exc
        except openai.APITimeoutError as exc:
            raise ProviderError(ErrorKind.TIMEOUT, "The request timed out") from exc
        except openai.APIConnectionError as exc:
            raise ProviderError(ErrorKind.UNREACHABLE, _describe(exc)) from exc
        except _TRANSPORT_ERRORS as exc:
            if parser.finish_reason is None:
                raise _transport_error(exc, attempt.output_started) from exc
            # The step had finished; only the end marker or a trailing usage chunk was lost.
            logger.warning(
                "stream broke after finish_reason %r: %s", parser.finish_reason, _describe(exc)
            )

        for event in parser.finish():
            attempt.output_started = True
            yield event
        if not parser.done and parser.finish_reason is None:
            if attempt.output_started:
                raise ProviderError(ErrorKind.STREAM, "The stream ended early")
            # Nothing was shown, so this is safe to retry like any server hiccup.
            raise ProviderError(ErrorKind.SERVER, "The stream ended before any output")
        attempt.result = StepResult(
            finish_reason=parser.finish_reason,
            usage=parser.usage,
            tool_calls=parser.tool_calls,
            malformed_lines=attempt.malformed_lines,
        )


def _transport_error(exc: BaseException, output_started: bool) -> ProviderError:
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderError(ErrorKind.TIMEOUT, "The stream stalled past the timeout")
    if output_started:
        return ProviderError(ErrorKind.STREAM, _describe(exc))
    return ProviderError(ErrorKind.UNREACHABLE, _describe(exc))


def _describe(exc: BaseException) -> str:
    # httpx errors often have an empty str(); the class name still says what happened.
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
