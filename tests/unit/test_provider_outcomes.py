"""Secret scrubbing, Retry-After parsing and status classification, one rule at a time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from service.providers.outcomes import (
    MESSAGE_LIMIT,
    classify_status,
    error_text,
    retry_after_s,
    scrub,
)


def test_the_exact_key_is_redacted_even_when_short() -> None:
    assert scrub("bad key abc123 given", "abc123") == "bad key [redacted] given"


def test_any_bearer_token_is_redacted_whatever_the_key() -> None:
    assert scrub("sent Authorization: Bearer tok_live_1234", None) == (
        "sent Authorization: Bearer [redacted]"
    )


def test_sk_looking_tokens_are_redacted_whatever_the_key() -> None:
    assert scrub("key sk-proj-AbC123xyz is revoked", "other") == "key [redacted] is revoked"


def test_a_partly_masked_echo_of_the_key_is_redacted() -> None:
    key = "gsk_7Hq2LmN9pRt4VwXy"
    assert scrub("Incorrect key gsk_7Hq2Lm****VwXy provided", key) == (
        "Incorrect key [redacted] provided"
    )


def test_ordinary_words_survive_scrubbing() -> None:
    text = "model 'llama-3.1-70b-instruct' is overloaded"
    assert scrub(text, "sk-unrelated-secret-0000") == text


def test_messages_are_truncated_and_nul_free() -> None:
    scrubbed = scrub("a\x00" + "b" * 5000, None)
    assert "\x00" not in scrubbed
    assert len(scrubbed) == MESSAGE_LIMIT


def test_a_key_at_the_truncation_boundary_does_not_survive_in_part() -> None:
    key = "key-0123456789abcdef"
    text = "x" * (MESSAGE_LIMIT - 10) + key
    assert "0123456789" not in scrub(text, key)


def headers(**values: str) -> httpx.Headers:
    return httpx.Headers({k.replace("_", "-"): v for k, v in values.items()})


def test_retry_after_in_seconds() -> None:
    assert retry_after_s(headers(retry_after="2.5")) == 2.5


def test_retry_after_as_an_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    seconds = retry_after_s(headers(retry_after=when))
    assert seconds is not None and 100 < seconds <= 120


def test_retry_after_in_the_past_means_now() -> None:
    assert retry_after_s(headers(retry_after="Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert retry_after_s(headers(retry_after_ms="250", retry_after="9")) == 0.25


@pytest.mark.parametrize("value", ["soon", "inf", "nan", ""])
def test_unusable_retry_after_is_ignored(value: str) -> None:
    assert retry_after_s(headers(retry_after=value)) is None


def test_no_retry_after_is_none() -> None:
    assert retry_after_s(headers()) is None


@pytest.mark.parametrize(
    "status,body,kind",
    [
        (200, b"", None),
        (429, b"", "rate_limited"),
        (500, b"", "server_error"),
        (503, b"", "server_error"),
        (400, b'{"error": {"code": "content_policy_violation"}}', "content_filter"),
        (400, b'{"error": {"message": "max_tokens too large"}}', "client_error"),
        (403, b"forbidden", "client_error"),
        (302, b"", "malformed_response"),
    ],
)
def test_statuses_map_to_error_kinds(status: int, body: bytes, kind: str | None) -> None:
    assert classify_status(status, body) == kind


@pytest.mark.parametrize(
    "body,text",
    [
        (b'{"error": {"message": "bad model"}}', "bad model"),
        (b'{"error": "overloaded"}', "overloaded"),
        (b'{"message": "quota"}', "quota"),
        (b"<html>502</html>", "<html>502</html>"),
        (b"", "(empty body)"),
    ],
)
def test_error_text_prefers_the_providers_own_message(body: bytes, text: str) -> None:
    assert error_text(body) == text
