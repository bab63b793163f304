"""What a provider call came to, and how a failed one is described safely.

Shared by every protocol adapter: the two outcome Structs, the HTTP-status
classification into DESIGN.md's closed list of error kinds, Retry-After parsing,
``redact_key``, which takes the provider's key out of any text a provider sent (its
answers too), and ``scrub``, which also takes bearer tokens out of error messages.
"""

from __future__ import annotations

import base64
import functools
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
KEY_REDACTED = "[redacted provider key]"
# A key that is not secret-like (shorter than this without separators, or of one kind
# of character) is only replaced as itself, a whole token (see redact_key).
SECRET_LIKE_CHARS = 16


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


_BEARER = re.compile(r"(?i)\bbearer\s+(?!\[redacted)[^\s\"',;]+")
_SK_TOKEN = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{4,}")
_TOKEN = re.compile(r"[A-Za-z0-9_\-.~+/=*]{8,}")


def scrub(text: str, api_key: str | None) -> str:
    """``text`` without the key (``redact_key``), bearer tokens, ``sk-…`` tokens or NULs,
    truncated: for error messages, where no answer's wording is at stake.

    A token sharing any 8-character run with the key is redacted too, because
    providers often echo a key partly masked (``abcd1234****wxyz``).
    """
    text = redact_key(text[:_BODY_LIMIT].replace("\x00", ""), api_key)
    if api_key and not secret_like(api_key):  # in a message, also inside a longer word
        text = text.replace(api_key, KEY_REDACTED)
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


def redact_key(text: str, api_key: str | None) -> str:
    """``text`` with every form of ``api_key`` below replaced by ``KEY_REDACTED``.

    The forms: the key itself; the key in standard or URL-safe base64 at any byte
    alignment, so inside an encoded ``Bearer KEY`` or ``user:KEY`` too (the whole
    base64 run is replaced); the key with separators between its characters
    (``E V I L``, ``E-V-I-L``, zero-width characters); each of these behind JSON
    escapes (``\\u0045``, ``\\/``), up to three levels deep. When the key shows only
    once escapes are decoded, the text is returned decoded, the key replaced.

    A key that is not ``secret_like`` is replaced only where it stands as a whole
    token: its encodings and spaced forms would match ordinary text ("not needed" for
    the key ``not-needed``), and such a key (a local server's placeholder: ``EMPTY``,
    ``lm-studio``, ``anything``) is no secret anyway.
    """
    if not api_key or not text:
        return text
    forms = _key_forms(api_key)
    result = view = forms.redact(text)
    # Only escapes that can stand for a key's characters are worth decoding: LaTeX in
    # answers (\\frac) is common, and escaped separators (\\n, \\") are separators.
    for _ in range(3):
        if "\\" not in view or not _HIDING_ESCAPE.search(view):
            break
        decoded = _unescape(view)
        view = forms.redact(decoded)
        if view != decoded:
            result = view
    return result


_SEPARATOR_CHARS = r"\s\-_.,:;|/'\"\u00ad\u00b7\u2010-\u2015\u2022\u2027\u200b-\u200f\u2060\ufeff"
_SEPARATOR = rf"(?:[{_SEPARATOR_CHARS}]|\\[\\\"/bfnrt])"
_IS_SEPARATOR = re.compile(f"[{_SEPARATOR_CHARS}]")
_HIDING_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|/)")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/\-_]+=*")
_URL_SAFE = str.maketrans("+/", "-_")


def secret_like(key: str) -> bool:
    """A key that looks generated: 16 characters or more besides separators, mixing at
    least two of lower case, upper case, digits and symbols (real keys do; a
    placeholder such as ``not-needed-anyway`` does not)."""
    skeleton = [c for c in key if not _IS_SEPARATOR.fullmatch(c)]
    kinds = {
        "lower" if c.islower() else "upper" if c.isupper() else "digit" if c.isdigit() else "symbol"
        for c in skeleton
    }
    return len(skeleton) >= SECRET_LIKE_CHARS and len(kinds) >= 2


class _KeyForms:
    """The forms of one key ``redact_key`` looks for, compiled once per key."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.short: re.Pattern[str] | None = None
        self.encoded: tuple[str, ...] = ()  # base64, where ``in`` is cheaper than a regex
        self.spaced: re.Pattern[str] | None = None
        if not secret_like(key):
            self.short = re.compile(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])")
            return
        self.encoded = _base64_middles(key.encode())
        skeleton = [c for c in key if not _IS_SEPARATOR.fullmatch(c)]
        if len(skeleton) >= SECRET_LIKE_CHARS:
            # Possessive: a separator run is never given back, so matching stays linear.
            self.spaced = re.compile(f"{_SEPARATOR}*+".join(map(re.escape, skeleton)))

    def redact(self, text: str) -> str:
        """``text`` with the key's plain, base64 and spaced forms replaced."""
        if self.short is not None:
            return self.short.sub(KEY_REDACTED, text) if self.key in text else text
        if self.key in text:
            text = text.replace(self.key, KEY_REDACTED)
        if any(middle in text for middle in self.encoded):
            text = _BASE64_RUN.sub(self._encoded_run, text)
        return self.spaced.sub(KEY_REDACTED, text) if self.spaced is not None else text

    def _encoded_run(self, match: re.Match[str]) -> str:
        run = match.group()
        return KEY_REDACTED if any(middle in run for middle in self.encoded) else run


@functools.lru_cache(maxsize=32)
def _key_forms(key: str) -> _KeyForms:
    # By value: compiling costs ~60 us, a call ~20 us; a rotated key gets its own entry,
    # and holding a key here exposes nothing the process's environment does not.
    return _KeyForms(key)


def _base64_middles(secret: bytes) -> tuple[str, ...]:
    """The base64 characters that depend on ``secret`` alone, at each of the three byte
    alignments it can have inside a longer encoded text, in both alphabets."""
    middles: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + secret).decode()
        middle = encoded[-(-8 * offset // 6) : 8 * (offset + len(secret)) // 6]
        middles |= {middle, middle.translate(_URL_SAFE)}
    return tuple(sorted(middles))


_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|x([0-9a-fA-F]{2})|([\"\\/bfnrt]))")
_SIMPLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(text: str) -> str:
    """``text`` with JSON (and ``\\xHH``) escapes decoded, surrogate pairs joined, lone
    surrogates replaced and NULs dropped: the result may be stored as jsonb."""
    decoded = _ESCAPE.sub(_unescaped, text)
    joined = decoded.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return joined.replace("\x00", "")


def _unescaped(match: re.Match[str]) -> str:
    code, byte, simple = match.groups()
    if simple is not None:
        return _SIMPLE_ESCAPES.get(simple, simple)
    return chr(int(code or byte, 16))
