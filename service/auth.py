"""API keys: creation, revocation and verification. Only a hash of the secret is kept.

A key reads ``fl_<key_id>_<secret>``; the key id is public (it names the key in logs
and in the CLI), the secret is 32 random bytes, stored as its sha256.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from service.store.database import Connection

SCOPES = ("fuse", "read", "label", "admin")
_KEY = re.compile(r"^fl_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")

INSERT_KEY_SQL = """
INSERT INTO api_keys (key_id, tenant, name, scopes, secret_sha256, rate_per_minute)
VALUES ($1, $2, $3, $4, $5, $6)
"""
LOOKUP_KEY_SQL = """
SELECT tenant, name, scopes, secret_sha256, rate_per_minute, revoked_at IS NOT NULL AS revoked
FROM api_keys WHERE key_id = $1
"""
REVOKE_KEY_SQL = "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL"
LIST_KEYS_SQL = """
SELECT key_id, tenant, name, scopes, rate_per_minute, created_at, revoked_at
FROM api_keys ORDER BY created_at
"""


class InvalidKeyRequest(ValueError):
    """A key that cannot be created or revoked as asked."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified key speaks for."""

    key_id: str
    tenant: str
    scopes: frozenset[str]
    rate_per_minute: int


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def create_key(
    conn: Connection, tenant: str, scopes: list[str], name: str = "", rate_per_minute: int = 600
) -> tuple[str, str]:
    """Create a key; returns (key_id, the full key — shown once, never stored)."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidKeyRequest(f"scopes must be some of {', '.join(SCOPES)} (got {scopes})")
    if not tenant.strip():
        raise InvalidKeyRequest("the tenant must not be empty")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    await conn.execute(
        INSERT_KEY_SQL, key_id, tenant, name, sorted(set(scopes)), _digest(secret), rate_per_minute
    )
    return key_id, f"fl_{key_id}_{secret}"


async def revoke_key(conn: Connection, key_id: str) -> bool:
    """Revoke a key; False when no active key has that id."""
    return bool(await conn.execute(REVOKE_KEY_SQL, key_id) == "UPDATE 1")


async def verify_key(conn: Connection, presented: str) -> Principal | None:
    """The principal of a valid, unrevoked key, else None (one indexed lookup)."""
    match = _KEY.match(presented)
    if match is None:
        return None
    key_id, secret = match.groups()
    row = await conn.fetchrow(LOOKUP_KEY_SQL, key_id)
    if row is None or row["revoked"]:
        return None
    if not hmac.compare_digest(bytes(row["secret_sha256"]), _digest(secret)):
        return None
    return Principal(key_id, row["tenant"], frozenset(row["scopes"]), row["rate_per_minute"])
