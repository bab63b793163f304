"""The verified-key cache: hits within its TTL, misses after, never holds a key."""

from __future__ import annotations

import time

from service.api.auth import KeyCache
from service.auth import Principal

PRINCIPAL = Principal("k1", "tenant-a", frozenset({"read"}), 600)


def test_a_verified_key_is_remembered_for_its_ttl_only() -> None:
    cache = KeyCache(ttl_s=0.05)
    assert cache.get("fl_k1_secret") is None
    cache.put("fl_k1_secret", PRINCIPAL)
    assert cache.get("fl_k1_secret") == PRINCIPAL
    assert cache.get("fl_k1_other") is None  # another secret for the same id: no hit
    time.sleep(0.06)
    assert cache.get("fl_k1_secret") is None  # expired: the next request looks it up


def test_the_cache_holds_digests_not_keys() -> None:
    cache = KeyCache()
    cache.put("fl_k1_secret", PRINCIPAL)
    (stored,) = cache.entries
    assert b"secret" not in stored and len(stored) == 32
