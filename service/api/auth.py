"""API-key authentication, scopes, tenancy and rate limits, as one ASGI middleware.

The scope a request needs is decided here, in one table, from its method and path,
so every route (including ones added later) is covered by the same policy; a /v1
route that matches no rule needs ``admin``.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseStartEvent, Receive, Scope, Send

from service.api.errors import problem_body
from service.auth import Principal, verify_key

PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/schema")
SCOPE_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(r"^/v1/runs/[^/]+/outcomes$"), "label"),
    ("POST", re.compile(r"^/v1/(fusions|chat/completions|replays|runs/[^/]+/replays)$"), "fuse"),
    ("POST", re.compile(r"^/v1/route$"), "read"),
    ("GET", re.compile(r"^/v1/"), "read"),
)


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs; None for public paths."""
    if path.startswith(PUBLIC_PATHS) or not path.startswith("/v1/"):
        return None
    for rule_method, pattern, scope in SCOPE_RULES:
        if method == rule_method and pattern.match(path):
            return scope
    return "admin"


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """A token bucket per key: rate_per_minute, with a burst of a tenth of a minute."""

    buckets: dict[str, _Bucket] = field(default_factory=dict)

    def retry_after(self, principal: Principal) -> float:
        """0 when the request may pass, else seconds until it may."""
        rate = principal.rate_per_minute / 60.0
        burst = max(principal.rate_per_minute / 10.0, 1.0)
        now = time.monotonic()
        bucket = self.buckets.setdefault(principal.key_id, _Bucket(burst, now))
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate


KEY_CACHE_TTL_S = 5.0
KEY_CACHE_MAX = 10_000


@dataclass
class KeyCache:
    """Keys verified in the last few seconds, so a busy client costs one key lookup per
    ``ttl_s``, not one per request. Held by the key's SHA-256, never the key itself;
    only valid keys are kept. A revoked key stops working within ``ttl_s``."""

    ttl_s: float = KEY_CACHE_TTL_S
    entries: dict[bytes, tuple[Principal, float]] = field(default_factory=dict)

    def get(self, presented: str) -> Principal | None:
        """The principal verified for this key in the last ``ttl_s``, else None."""
        hit = self.entries.get(hashlib.sha256(presented.encode()).digest())
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, presented: str, principal: Principal) -> None:
        """Remember a key just verified (the cache is emptied when it grows too big)."""
        if len(self.entries) >= KEY_CACHE_MAX:
            self.entries.clear()
        expires = time.monotonic() + self.ttl_s
        self.entries[hashlib.sha256(presented.encode()).digest()] = (principal, expires)


def _presented_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


async def _problem(
    scope: Scope,
    send: Send,
    status: int,
    title: str,
    detail: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = msgspec.json.encode(problem_body(status, title, detail, scope["path"]))
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            *(headers or []),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})


@dataclass
class KeyChecks:
    """The app's one rate limiter and key cache. Litestar builds a route's middleware
    for each route, so what the middleware itself held was per route: a key had a
    bucket per endpoint, and its rate applied to each of them."""

    limiter: RateLimiter = field(default_factory=RateLimiter)
    keys: KeyCache = field(default_factory=KeyCache)


def auth_middleware(app: ASGIApp) -> ASGIApp:
    """Authenticate /v1 requests when the app requires keys; set tenant and actor."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        state: Any = scope["app"].state
        checks: KeyChecks | None = getattr(state, "key_checks", None)
        if checks is None:
            checks = state.key_checks = KeyChecks()
        limiter, keys = checks.limiter, checks.keys
        needed = required_scope(str(scope.get("method", "GET")), scope["path"])
        if needed is None or not getattr(state, "auth_required", False):
            await app(scope, receive, send)
            return
        presented = _presented_key(scope)
        if presented is None:
            await _problem(
                scope,
                send,
                401,
                "Unauthorized",
                "an API key is required (Authorization: Bearer fl_…)",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        principal = keys.get(presented)
        if principal is None:
            async with state.services.store.pool.acquire() as conn:
                principal = await verify_key(conn, presented)
            if principal is not None:
                keys.put(presented, principal)
        if principal is None:
            await _problem(
                scope,
                send,
                401,
                "Unauthorized",
                "the API key is unknown or revoked",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if needed not in principal.scopes and "admin" not in principal.scopes:
            await _problem(
                scope,
                send,
                403,
                "Forbidden",
                f"this key lacks the '{needed}' scope for this request",
            )
            return
        wait = limiter.retry_after(principal)
        if wait > 0:
            await _problem(
                scope,
                send,
                429,
                "Too many requests",
                f"rate limit of {principal.rate_per_minute}/min for this key",
                [(b"retry-after", str(max(1, round(wait))).encode())],
            )
            return
        request_state = scope.setdefault("state", {})
        request_state["tenant"] = principal.tenant
        request_state["actor"] = f"key:{principal.key_id}"
        await app(scope, receive, send)

    return middleware
