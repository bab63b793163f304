"""Secret scrubbing, Retry-After parsing and status classification, one rule at a time."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from service.providers.outcomes import (
    KEY_REDACTED,
    MESSAGE_LIMIT,
    classify_status,
    error_text,
    redact_key,
    retry_after_s,
    scrub,
)

KEY = "sk-live-0123456789abcdefSECRET"


def test_the_exact_key_is_redacted_even_when_short() -> None:
    assert scrub("bad key abc123 given", "abc123") == f"bad key {KEY_REDACTED} given"
    assert scrub("key=xabc123", "abc123") == f"key=x{KEY_REDACTED}"  # not an answer's word


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


def test_an_error_body_over_64_kib_with_a_json_escaped_key_is_scrubbed() -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    body = f'{{"error": {{"message": "key {escaped}", "pad": "{"x" * 70_000}"}}}}'.encode()
    message = scrub(error_text(body), KEY)
    assert KEY_REDACTED in message and escaped[:30] not in message


@pytest.mark.parametrize(
    "text",
    [
        KEY,
        f'"{KEY}"',
        f"{KEY}{KEY}",
        " ".join(KEY),
        "-".join(KEY),
        "\u200b".join(KEY),
        "\u2060".join(KEY),
        ", ".join(f'"{c}"' for c in KEY),
        json.dumps(list(KEY)),
        "\\n".join(KEY),  # separators behind JSON escapes
        "".join(f"\\u{ord(c):04X}" for c in KEY),
        json.dumps(json.dumps("".join(f"\\u{ord(c):04x}" for c in KEY))),  # escaped twice
        base64.b64encode(f"Bearer {KEY}".encode()).decode(),
        base64.b64encode(f"user:{KEY}".encode()).decode(),
        base64.urlsafe_b64encode(KEY.encode()).decode().rstrip("="),
    ],
)
def test_every_known_form_of_the_key_is_redacted(text: str) -> None:
    redacted = redact_key(f"before {text} after", KEY)
    # nothing is left of the form but the marker and the quotes or brackets around it
    assert KEY_REDACTED in redacted
    assert re.sub(r'["\[\]]', "", redacted.replace(KEY_REDACTED, "")) == "before  after"


ODD_KEY = "sk-odd~?>key~?>with~?>chars"  # encodes to "+" and "/", unlike letters and digits


@pytest.mark.parametrize("prefix", ["", "x", "xy"])
def test_base64_with_either_alphabet_or_escaped_slashes_is_redacted(prefix: str) -> None:
    standard = base64.b64encode(f"{prefix}Bearer {ODD_KEY}".encode()).decode()
    url_safe = base64.urlsafe_b64encode(f"{prefix}Bearer {ODD_KEY}".encode()).decode()
    assert standard != url_safe
    for encoded in (standard, url_safe.rstrip("="), standard.replace("/", "\\/")):
        assert redact_key(f"got {encoded}.", ODD_KEY) == f"got {KEY_REDACTED}."


@pytest.mark.parametrize(
    "text",
    [
        "Let me think step by step: 2 + 2 = 4, so the answer is 4.",
        r"$\frac{1}{2} + \sqrt{x} \neq \underline{y}$, and \u00e9 is é",
        "sk-live is a prefix; 0123456789 are digits; abcdef are letters; SECRET is a word",
        base64.b64encode(b"an unrelated attachment, nothing secret" * 10).decode(),
        "s k - l i v e",  # the key's first characters only
    ],
)
def test_text_without_the_key_is_left_alone(text: str) -> None:
    assert redact_key(text, KEY) == text


def test_a_json_answer_stays_json_when_the_key_in_it_is_redacted() -> None:
    answer = json.dumps({"final_answer": f"The key is {KEY}", "chosen": "A"})
    assert json.loads(redact_key(answer, KEY))["final_answer"] == f"The key is {KEY_REDACTED}"


def test_a_key_hidden_behind_escapes_comes_back_decoded_and_redacted() -> None:
    hidden = "".join(f"\\u{ord(c):04x}" for c in KEY)
    assert redact_key(f"tab\\there {hidden}!", KEY) == f"tab\there {KEY_REDACTED}!"


@pytest.mark.parametrize("placeholder", ["not-needed", "anything", "lm-studio", "password"])
def test_a_placeholder_key_leaves_ordinary_words_alone(placeholder: str) -> None:
    # Local servers take any key; these common ones redacted words out of answers
    # ("That step is not needed here." lost "not needed"), for good.
    text = "That step is not needed here; lm studio, passwords or anythings will do."
    assert redact_key(text, placeholder) == text
    assert redact_key(f"key={placeholder}!", placeholder) == f"key={KEY_REDACTED}!"


def test_a_short_key_is_redacted_only_as_a_whole_token() -> None:
    text = "EMPTY means EMPTYING nothing; base64 RU1QVFk= and E M P T Y stay"
    assert redact_key(text, "EMPTY") == text.replace("EMPTY means", f"{KEY_REDACTED} means")


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
