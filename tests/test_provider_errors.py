"""Provider failures are classified by kind, with retry policy and UI wording to match."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from agents.errors import ErrorKind, ProviderError, classify_http_error, classify_stream_error


def moonshot_body(error_type: str, message: str) -> bytes:
    return json.dumps({"error": {"type": error_type, "message": message}}).encode()


# Every row of the error table in docs kimi-protocol.md, with Moonshot's real wording.
@pytest.mark.parametrize(
    ("status", "error_type", "message", "kind"),
    [
        (400, "invalid_request_error", "Invalid request: temperature must be <= 1", "bad_request"),
        (
            400,
            "invalid_request_error",
            "Invalid request: Your request exceeded model token limit: 262144",
            "context_too_long",
        ),
        (
            400,
            "invalid_request_error",
            "This model's maximum context length is 131072 tokens.",
            "context_too_long",
        ),
        (
            400,
            "invalid_request_error",
            "thinking is enabled but reasoning_content is missing in assistant tool call "
            "message at index 2",
            "bad_request",
        ),
        (
            400,
            "content_filter",
            "The request was rejected because it was considered high risk",
            "content_filter",
        ),
        (401, "invalid_authentication_error", "Invalid Authentication", "auth"),
        (403, "permission_denied_error", "Your account is suspended", "permission"),
        (
            404,
            "resource_not_found_error",
            "Not found the model kimi-k9 or Permission denied",
            "not_found",
        ),
        (
            429,
            "engine_overloaded_error",
            "The engine is currently overloaded, please try again later",
            "overloaded",
        ),
        (
            429,
            "rate_limit_reached_error",
            "Your account reached max request: 3, please try again after 1 seconds",
            "rate_limited",
        ),
        (
            429,
            "exceeded_current_quota_error",
            "Your account is not active, please check your billing details",
            "quota",
        ),
        (429, "something_new", "Slow down", "rate_limited"),
        (500, "server_error", "Internal server error", "server"),
        (502, "server_error", "Bad gateway", "server"),
        (503, "server_error", "Service unavailable", "server"),
        (504, "timeout", "Request timed out", "timeout"),
        (409, "conflict", "Conflict", "bad_request"),
        (422, "unprocessable", "Unprocessable", "bad_request"),
    ],
)
def test_http_errors_are_classified_per_the_protocol_table(
    status: int, error_type: str, message: str, kind: str
) -> None:
    error = classify_http_error(status, moonshot_body(error_type, message))

    assert error.kind is ErrorKind(kind)
    assert error.status == status
    assert error.error_type == error_type
    assert error.message == message


def test_retryable_kinds_are_transient_ones_only() -> None:
    retryable = {kind for kind in ErrorKind if ProviderError(kind, "x").retryable}

    assert retryable == {
        ErrorKind.OVERLOADED,
        ErrorKind.RATE_LIMITED,
        ErrorKind.SERVER,
        ErrorKind.TIMEOUT,
        ErrorKind.UNREACHABLE,
    }


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_every_kind_has_a_user_message_sentence(kind: ErrorKind) -> None:
    message = ProviderError(kind, "details from the provider", status=400).user_message

    assert message[0].isupper()
    assert message.endswith(".")


def test_auth_error_tells_the_user_an_admin_must_fix_the_configuration() -> None:
    error = classify_http_error(401, moonshot_body("invalid_authentication_error", "Invalid"))

    assert error.user_message == (
        "The model provider rejected the API key (401). "
        "An admin must fix the provider configuration."
    )


def test_user_messages_say_what_happened() -> None:
    too_long = classify_http_error(
        400, moonshot_body("invalid_request_error", "exceeded model token limit")
    )
    refused = classify_http_error(400, moonshot_body("content_filter", "high risk"))
    quota = classify_http_error(429, moonshot_body("exceeded_current_quota_error", "no money"))
    bad = classify_http_error(400, moonshot_body("invalid_request_error", "tools[0] is invalid"))

    assert "too long for the model's context" in too_long.user_message
    assert refused.user_message == "The provider refused this request as high risk."
    assert "out of quota" in quota.user_message
    assert "tools[0] is invalid" in bad.user_message


def test_a_huge_provider_message_is_shortened_for_the_user() -> None:
    error = classify_http_error(400, "<html>" + "x" * 5000 + "</html>")

    assert error.kind is ErrorKind.BAD_REQUEST
    assert len(error.user_message) < 500
    assert len(error.message) > 5000


@pytest.mark.parametrize(
    "body",
    [
        moonshot_body("engine_overloaded_error", "busy"),
        moonshot_body("engine_overloaded_error", "busy").decode(),
        {"error": {"type": "engine_overloaded_error", "message": "busy"}},
        # The openai SDK keeps only the inner object on APIStatusError.body.
        {"type": "engine_overloaded_error", "message": "busy"},
    ],
    ids=["bytes", "str", "dict", "inner-dict"],
)
def test_error_bodies_are_read_in_every_shape(body: object) -> None:
    error = classify_http_error(429, body)

    assert error.kind is ErrorKind.OVERLOADED
    assert error.message == "busy"


def test_a_body_that_is_not_json_becomes_the_message() -> None:
    error = classify_http_error(502, b"Bad Gateway\n")

    assert error.kind is ErrorKind.SERVER
    assert error.message == "Bad Gateway"
    assert error.error_type is None


def test_an_empty_body_still_gives_a_message() -> None:
    assert classify_http_error(503, b"").message == "HTTP 503"
    assert classify_http_error(500, None).message == "HTTP 500"


def test_vllm_and_openrouter_error_shapes_are_understood() -> None:
    vllm = classify_http_error(
        400,
        {
            "object": "error",
            "message": "This model's maximum context length is 262144 tokens.",
            "type": "BadRequestError",
            "code": 400,
        },
    )
    openrouter = classify_http_error(
        402, {"error": {"code": 402, "message": "Insufficient credits"}}
    )
    fastapi = classify_http_error(404, {"detail": "Not Found"})

    assert vllm.kind is ErrorKind.CONTEXT_TOO_LONG
    assert openrouter.kind is ErrorKind.QUOTA
    assert (fastapi.kind, fastapi.message) == (ErrorKind.NOT_FOUND, "Not Found")


def test_openai_style_string_codes_are_used_when_there_is_no_type() -> None:
    error = classify_http_error(
        429, {"error": {"code": "insufficient_quota", "message": "You exceeded your quota"}}
    )

    assert error.kind is ErrorKind.QUOTA
    assert error.error_type == "insufficient_quota"


def test_a_payload_too_large_means_the_conversation_is_too_long() -> None:
    assert classify_http_error(413, b"Request Entity Too Large").kind is ErrorKind.CONTEXT_TOO_LONG


def test_retry_after_comes_from_the_header_in_seconds() -> None:
    error = classify_http_error(
        429, moonshot_body("rate_limit_reached_error", "slow down"), {"Retry-After": "7"}
    )

    assert error.retry_after == 7.0


def test_retry_after_ms_header_is_preferred() -> None:
    headers = {"retry-after-ms": "250", "retry-after": "1"}

    error = classify_http_error(429, moonshot_body("rate_limit_reached_error", "x"), headers)

    assert error.retry_after == 0.25


def test_retry_after_may_be_an_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)

    error = classify_http_error(429, b"", {"retry-after": format_datetime(when, usegmt=True)})

    assert error.retry_after is not None
    assert 25 <= error.retry_after <= 31


def test_a_garbage_retry_after_header_is_ignored() -> None:
    error = classify_http_error(429, b"", {"Retry-After": "soon"})

    assert error.retry_after is None


@pytest.mark.parametrize(
    ("message", "seconds"),
    [
        ("please try again after 1 seconds", 1.0),
        ("Please try again in 20ms.", 0.02),
        ("Rate limit reached. Please try again in 1.5s", 1.5),
        ("retry after 2 minutes", 120.0),
        ("slow down", None),
    ],
)
def test_retry_after_is_read_from_the_message_when_no_header_says(
    message: str, seconds: float | None
) -> None:
    error = classify_http_error(429, moonshot_body("rate_limit_reached_error", message))

    assert error.retry_after == seconds


def test_rate_limited_user_message_mentions_the_wait() -> None:
    error = classify_http_error(429, b"", {"Retry-After": "12"})

    assert "Try again in 12 s." in error.user_message


def test_other_statuses_have_no_retry_after() -> None:
    error = classify_http_error(
        400, moonshot_body("invalid_request_error", "please try again after 5 seconds")
    )

    assert error.retry_after is None


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        ({"error": {"type": "engine_overloaded_error", "message": "busy"}}, "overloaded"),
        ({"error": {"type": "server_error", "message": "oops"}}, "server"),
        ({"error": {"type": "content_filter", "message": "high risk"}}, "content_filter"),
        # OpenRouter's mid-stream error: an HTTP-like number in "code".
        ({"error": {"code": 502, "message": "Provider returned error"}}, "server"),
        ({"error": {"code": 429, "message": "Rate limit exceeded"}}, "rate_limited"),
        ({"error": {"message": "something broke"}}, "stream"),
        ({"error": "plain string"}, "stream"),
        ({"error": {"type": "mystery", "message": "?"}}, "stream"),
    ],
)
def test_errors_inside_a_200_stream_are_classified(obj: dict[str, object], kind: str) -> None:
    error = classify_stream_error(obj)

    assert error.kind is ErrorKind(kind)
    assert error.status is None
    assert error.message


def test_provider_error_str_names_the_kind_and_status() -> None:
    error = classify_http_error(401, moonshot_body("invalid_authentication_error", "Invalid"))

    assert str(error) == "auth (401): Invalid"
    assert "kind='auth'" in repr(error)
