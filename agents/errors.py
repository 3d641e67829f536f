"""Provider failures, classified once so that retry policy and UI wording agree.

Every way a provider can fail (an HTTP error status, a transport failure, an error object inside
a 200 stream) ends up as one `ProviderError` with an `ErrorKind`. The kind decides whether the
client may retry and which sentence the user sees; the provider's own message is kept for logs
and, where it helps, shown too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

# Provider messages can be whole HTML error pages from a proxy: keep what the UI shows short.
_MAX_SHOWN_MESSAGE = 300


class ErrorKind(StrEnum):
    """What went wrong, in terms the app acts on (retry or not, what to tell the user)."""

    BAD_REQUEST = "bad_request"
    CONTEXT_TOO_LONG = "context_too_long"
    CONTENT_FILTER = "content_filter"
    AUTH = "auth"
    PERMISSION = "permission"
    NOT_FOUND = "not_found"
    OVERLOADED = "overloaded"
    RATE_LIMITED = "rate_limited"
    QUOTA = "quota"
    SERVER = "server"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    # An error object inside a 200 stream that we cannot classify, or a stream cut short.
    STREAM = "stream"


# Transient kinds: the same request may well succeed a moment later. QUOTA is not among them:
# an empty account stays empty, and retrying would only hammer the provider.
_RETRYABLE = frozenset(
    {
        ErrorKind.OVERLOADED,
        ErrorKind.RATE_LIMITED,
        ErrorKind.SERVER,
        ErrorKind.TIMEOUT,
        ErrorKind.UNREACHABLE,
    }
)


class ProviderError(Exception):
    """A classified failure of the model provider."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            f"{kind.value}: {message}" if status is None else f"{kind.value} ({status}): {message}"
        )
        self.kind = kind
        self.message = message
        self.status = status
        self.error_type = error_type
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"ProviderError(kind={self.kind.value!r}, message={self.message!r}, "
            f"status={self.status!r}, error_type={self.error_type!r}, "
            f"retry_after={self.retry_after!r})"
        )

    @property
    def retryable(self) -> bool:
        """Whether sending the same request again may succeed (if nothing streamed yet)."""
        return self.kind in _RETRYABLE

    @property
    def user_message(self) -> str:
        """One clear sentence (or two) for the chat UI."""
        code = f" ({self.status})" if self.status is not None else ""
        said = self._provider_said()
        match self.kind:
            case ErrorKind.BAD_REQUEST:
                return f"The model provider rejected the request{code}.{said}"
            case ErrorKind.CONTEXT_TOO_LONG:
                return (
                    "The conversation is too long for the model's context window. "
                    f"Start a new conversation or remove some of the earlier messages.{said}"
                )
            case ErrorKind.CONTENT_FILTER:
                return "The provider refused this request as high risk."
            case ErrorKind.AUTH:
                return (
                    f"The model provider rejected the API key{code or ' (401)'}. "
                    "An admin must fix the provider configuration."
                )
            case ErrorKind.PERMISSION:
                return f"The model provider denied access{code}.{said}"
            case ErrorKind.NOT_FOUND:
                return (
                    f"The model provider does not know this model or endpoint{code}. "
                    f"An admin must fix the provider configuration.{said}"
                )
            case ErrorKind.OVERLOADED:
                return "The model is overloaded right now. Try again in a moment."
            case ErrorKind.RATE_LIMITED:
                wait = (
                    f" in {max(1, round(self.retry_after))} s"
                    if self.retry_after is not None
                    else " in a moment"
                )
                return f"Too many requests to the model provider. Try again{wait}."
            case ErrorKind.QUOTA:
                return (
                    "The model provider account is out of quota or credit. "
                    "An admin must top it up or raise the limit."
                )
            case ErrorKind.SERVER:
                return f"The model provider had an internal error{code}. Try again."
            case ErrorKind.TIMEOUT:
                return "The model provider took too long to answer. Try again."
            case ErrorKind.UNREACHABLE:
                return (
                    "Could not reach the model provider. "
                    "Check the network or the provider URL, then try again."
                )
            case ErrorKind.STREAM:
                return f"The model's response stream broke off ({self._shown_message()})."

    def _provider_said(self) -> str:
        text = self._shown_message()
        if not text:
            return ""
        if text[-1] not in ".!?…":
            text += "."
        return f" The provider said: {text}"

    def _shown_message(self) -> str:
        text = " ".join(self.message.split())
        if len(text) > _MAX_SHOWN_MESSAGE:
            text = text[: _MAX_SHOWN_MESSAGE - 1] + "…"
        return text


# Moonshot says "exceeded model token limit"; OpenAI and vLLM talk about "context length";
# others use "prompt is too long" / "too many tokens". All mean the same thing to the app.
_TOKEN_LIMIT = re.compile(
    r"token limit|context.?length|context window|maximum context|too many tokens"
    r"|prompt is too long|input is too long|context_length_exceeded",
    re.IGNORECASE,
)
# Rate-limit messages often carry the wait in prose, e.g. Moonshot's "please try again after
# 1 seconds" or OpenAI's "Please try again in 20ms".
_WAIT_HINT = re.compile(
    r"(?:try again|retry)\s+(?:in|after)\s+(\d+(?:\.\d+)?)\s*"
    r"(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?)\b",
    re.IGNORECASE,
)
_TYPE_KINDS: dict[str, ErrorKind] = {
    "content_filter": ErrorKind.CONTENT_FILTER,
    "invalid_authentication_error": ErrorKind.AUTH,
    "authentication_error": ErrorKind.AUTH,
    "invalid_api_key": ErrorKind.AUTH,
    "permission_denied_error": ErrorKind.PERMISSION,
    "resource_not_found_error": ErrorKind.NOT_FOUND,
    "model_not_found": ErrorKind.NOT_FOUND,
    "engine_overloaded_error": ErrorKind.OVERLOADED,
    "overloaded_error": ErrorKind.OVERLOADED,
    "rate_limit_reached_error": ErrorKind.RATE_LIMITED,
    "rate_limit_exceeded": ErrorKind.RATE_LIMITED,
    "exceeded_current_quota_error": ErrorKind.QUOTA,
    "insufficient_quota": ErrorKind.QUOTA,
    "context_length_exceeded": ErrorKind.CONTEXT_TOO_LONG,
    "server_error": ErrorKind.SERVER,
    "internal_error": ErrorKind.SERVER,
    "timeout": ErrorKind.TIMEOUT,
}


def classify_http_error(
    status: int, body: object, headers: Mapping[str, str] | None = None
) -> ProviderError:
    """Turn an HTTP error response into a `ProviderError`, following kimi-protocol.md.

    `body` may be the raw bytes or text (JSON or not), the parsed `{"error": {...}}` object,
    or just its inner `{"type", "message"}` part (which is what the openai SDK keeps).
    """
    error_type, message = _parse_error_body(body)
    if not message:
        message = f"HTTP {status}"
    kind = _kind_for_status(status, error_type, message)
    retry_after = _retry_after_from_headers(headers)
    if retry_after is None and kind in (ErrorKind.RATE_LIMITED, ErrorKind.OVERLOADED):
        retry_after = _retry_after_from_message(message)
    return ProviderError(
        kind, message, status=status, error_type=error_type, retry_after=retry_after
    )


def classify_stream_error(obj: Mapping[str, Any]) -> ProviderError:
    """Classify a `{"error": {...}}` object that arrived inside a 200 stream.

    Providers that fail mid-stream can no longer change the status line, so they send the
    error as an event. OpenRouter puts an HTTP-like number in `code`; Moonshot-style objects
    carry a `type`. Anything unrecognisable is a `STREAM` error.
    """
    error_type, message = _parse_error_body(obj)
    if not message:
        message = "The provider reported an error inside the stream"
    error = obj.get("error")
    code = error.get("code") if isinstance(error, Mapping) else None
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
        kind = _kind_for_status(code, error_type, message)
    else:
        kind = _kind_for_type(error_type, message) or ErrorKind.STREAM
    retry_after = _retry_after_from_message(message) if kind is ErrorKind.RATE_LIMITED else None
    return ProviderError(kind, message, error_type=error_type, retry_after=retry_after)


def _kind_for_status(status: int, error_type: str | None, message: str) -> ErrorKind:
    by_type = _kind_for_type(error_type, message)
    if status == 401:
        return ErrorKind.AUTH
    if status == 402:
        # OpenRouter answers 402 when the account has no credit left.
        return ErrorKind.QUOTA
    if status == 403:
        return ErrorKind.PERMISSION
    if status == 404:
        return ErrorKind.NOT_FOUND
    if status == 408:
        return ErrorKind.TIMEOUT
    if status == 413:
        # The conversation is the only large part of the request.
        return ErrorKind.CONTEXT_TOO_LONG
    if status == 429:
        if by_type in (ErrorKind.OVERLOADED, ErrorKind.QUOTA, ErrorKind.RATE_LIMITED):
            return by_type
        return ErrorKind.RATE_LIMITED
    if status == 504:
        return ErrorKind.TIMEOUT
    if 400 <= status < 500:
        # Moonshot answers 400 invalid_request_error for both bad parameters and an
        # over-long context; only the message tells them apart.
        if by_type in (ErrorKind.CONTEXT_TOO_LONG, ErrorKind.CONTENT_FILTER):
            return by_type
        return ErrorKind.BAD_REQUEST
    if by_type is ErrorKind.OVERLOADED:
        return by_type
    return ErrorKind.SERVER


def _kind_for_type(error_type: str | None, message: str) -> ErrorKind | None:
    """The kind the error's type (or string code) names, else the one its message hints at."""
    if error_type is not None:
        kind = _TYPE_KINDS.get(error_type.lower())
        if kind is not None:
            return kind
    if _TOKEN_LIMIT.search(message):
        return ErrorKind.CONTEXT_TOO_LONG
    lowered = message.lower()
    if "high risk" in lowered:
        return ErrorKind.CONTENT_FILTER
    if "overload" in lowered:
        return ErrorKind.OVERLOADED
    if "quota" in lowered or "insufficient balance" in lowered:
        return ErrorKind.QUOTA
    return None


def _parse_error_body(body: object) -> tuple[str | None, str]:
    """Return (error type or code, message) from whatever shape the error body has."""
    if isinstance(body, bytes | bytearray):
        body = bytes(body).decode("utf-8", errors="replace")
    if isinstance(body, str):
        text = body.strip()
        try:
            body = json.loads(text)
        except ValueError:
            return None, text
    if not isinstance(body, Mapping):
        return None, "" if body is None else str(body)
    error: object = body.get("error", body)
    if isinstance(error, str):
        # {"error": "message"} from simple proxies.
        return None, error
    if not isinstance(error, Mapping):
        error = body
    error_type = error.get("type")
    code = error.get("code")
    if not isinstance(error_type, str) or not error_type:
        error_type = code if isinstance(code, str) and code else None
    message = error.get("message") or body.get("message") or body.get("detail") or ""
    return error_type, message if isinstance(message, str) else json.dumps(message)


def _retry_after_from_headers(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    # Plain dicts are case-sensitive; HTTP header names are not.
    lowered = {key.lower(): value for key, value in headers.items()}
    milliseconds = lowered.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _retry_after_from_message(message: str) -> float | None:
    match = _WAIT_HINT.search(message)
    if match is None:
        return None
    amount = float(match.group(1))
    unit = match.group(2).lower()
    if unit.startswith("ms") or unit.startswith("milli"):
        return amount / 1000
    if unit.startswith("m"):
        return amount * 60
    return amount
