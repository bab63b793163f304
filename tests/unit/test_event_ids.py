"""Event ids: random version 4 UUIDs that behave as uuid.UUID's own in every way the
log and its readers use them."""

from __future__ import annotations

import copy
import pickle
import uuid

import msgspec

from service.store.codec import NewEvent, new_event_id


def test_event_ids_are_random_version_4_uuids_equal_to_their_parsed_form() -> None:
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for made in ids[:200]:
        parsed = uuid.UUID(str(made))
        assert parsed == made and hash(parsed) == hash(made)
        assert made.version == 4 and made.variant == uuid.RFC_4122
        assert uuid.UUID(bytes=made.bytes) == made
        assert msgspec.json.decode(msgspec.json.encode(made), type=uuid.UUID) == made
        assert pickle.loads(pickle.dumps(made)) == made
        assert copy.copy(made) == made
    # Every bit outside the version and variant fields varies.
    fixed = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
    seen_ones = 0
    for made in ids:
        seen_ones |= made.int
    assert seen_ones & fixed == fixed


def test_new_events_get_fresh_ids() -> None:
    first, second = NewEvent(event=None, metadata={}), NewEvent(event=None, metadata={})  # type: ignore[arg-type]
    assert first.event_id != second.event_id
    assert first.event_id.version == 4
