"""The encoder's quick test for integers that may not fit 64 bits: it must catch every
such integer and, so that the exact walk stays rare, not a float's long run of digits
(a replay batch's latencies matched a plain run of 19 digits in nearly every batch,
and walking its whole document took more than half of the encoding time)."""

from __future__ import annotations

import msgspec
import pytest

from service.store.codec import _may_hold_long_integer


@pytest.mark.parametrize(
    "value",
    [{"a": 2**63}, {"a": [1, -(2**64)]}, [10**20], {"a": {"b": 10**30}}, 2**70, -(2**63) - 1,
     [0.5, 10**19], {"a": "x", "b": -(10**25)}],
)  # fmt: skip
def test_every_integer_beyond_18_digits_is_suspect(value: object) -> None:
    assert _may_hold_long_integer(msgspec.json.encode(value))


@pytest.mark.parametrize(
    "value",
    [{"a": 0.0001457329999539069}, {"a": 1e23}, {"a": 123456789012345678}, [0.1 + 0.2] * 3,
     {"a": -0.0001457329999539069}, {"a": 1.2345678901234567e-300}],
)  # fmt: skip
def test_floats_and_shorter_integers_are_not(value: object) -> None:
    assert not _may_hold_long_integer(msgspec.json.encode(value))
