"""What a provider call came to, and how a failed one is described safely.

Shared by every protocol adapter: the two outcome Structs, the HTTP-status
classification into DESIGN.md's closed list of error kinds, Retry-After parsing, and
``scrub``, which keeps keys and bearer tokens out of every message.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import msgspec

from service.domain.events import Attempt, ErrorKind

MESSAGE_LIMIT = 500
_BODY_LIMIT = 4000  # longer than MESSAGE_LIMIT + any key, so a cut key cannot survive
REDACTED = "[redacted]"


class CallSucceeded(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    finish_reason: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float
    attempts: list[Attempt]
    provider_response_id: str | None = None
    usage_estimated: bool = False  # no usage from the provider: tokens are ceil(chars / 4)


class CallFailed(msgspec.Struct, frozen=True, kw_only=True):
    error_kind: ErrorKind
    http_status: int | None
    attempts: list[Attempt]
    latency_ms: float
    message: str  # scrubbed of secrets, at most MESSAGE_LIMIT characters


CallOutcome = CallSucceeded | CallFailed

_CONTENT_FILTER = re.compile(r"content[_ ]?(filter|policy|management)", re.IGNORECASE)


def classify_status(status: int, body: bytes) -> ErrorKind | None:
    """The error kind of a non-2xx answer; None for 2xx (the body decides then)."""
    if 200 <= status < 300:
        return None
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    if 400 <= status < 500:
        text = body[:_BODY_LIMIT].decode("utf-8", "replace")
        return "content_filter" if _CONTENT_FILTER.search(text) else "client_error"
    return "malformed_response"  # 1xx/3xx: not an answer to a chat completion


def error_text(body: bytes) -> str:
    """The provider's own error message when the body is OpenAI-style JSON, else the body."""
    head = body[:_BODY_LIMIT]
    try:
        data: Any = msgspec.json.decode(body) if len(body) <= 65536 else None
    except msgspec.DecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data)
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message:
            return message[:_BODY_LIMIT]
    return head.decode("utf-8", "replace") or "(empty body)"


def retry_after_s(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    millis = _finite(headers.get("retry-after-ms"))
    if millis is not None:
        return max(0.0, millis / 1000)
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _finite(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _finite(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


_BEARER = re.compile(r"(?i)\bbearer\s+[^\s\"',;]+")
_SK_TOKEN = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{4,}")
_TOKEN = re.compile(r"[A-Za-z0-9_\-.~+/=*]{8,}")


def scrub(text: str, api_key: str | None) -> str:
    """``text`` without the key, bearer tokens, ``sk-…`` tokens or NULs, truncated.

    A token sharing any 8-character run with the key is redacted too, because
    providers often echo a key partly masked (``abcd1234****wxyz``).
    """
    text = text[:_BODY_LIMIT].replace("\x00", "")
    if api_key:
        text = text.replace(api_key, REDACTED)
    text = _BEARER.sub(f"Bearer {REDACTED}", text)
    text = _SK_TOKEN.sub(REDACTED, text)
    if api_key and len(api_key) >= 8:
        runs = {api_key[i : i + 8] for i in range(len(api_key) - 7)}
        text = _TOKEN.sub(
            lambda m: REDACTED if any(run in m.group() for run in runs) else m.group(), text
        )
    if len(text) > MESSAGE_LIMIT:
        text = text[: MESSAGE_LIMIT - 1] + "…"
    return text
