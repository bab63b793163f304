"""Deterministic random draws keyed by names, so a simulated outcome is a pure function.

A draw for (world seed, model, question id, sample) is the same in every process and
on every run: the key is hashed (BLAKE2b, 64 bits) into a uniform number. This is
what makes the simulator's answers reproducible without any shared RNG state.
"""

from __future__ import annotations

import hashlib
from statistics import NormalDist

STANDARD_NORMAL = NormalDist()
_SCALE = 2.0**-64


def uniform(*key: object) -> float:
    """A uniform number in (0, 1), fixed for this key."""
    digest = hashlib.blake2b("|".join(map(str, key)).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) * _SCALE


def normal(*key: object) -> float:
    """A standard normal number, fixed for this key."""
    return STANDARD_NORMAL.inv_cdf(uniform(*key))


def pick_index(count: int, *key: object) -> int:
    """An index in range(count), fixed for this key."""
    return min(int(uniform(*key) * count), count - 1)


def text_key(text: str) -> str:
    """A short stable key for a long text (prompts are keyed by content)."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
