"""Event <-> stored row encoding, and the canonical bytes the hash chain covers.

The canonical bytes are defined once, in SQL (``event_canonical_bytes`` in
schema/migrations/0001_event_log.sql); ``canonical_bytes`` below is the same
definition in Python so that ``verify`` recomputes chains without trusting the
database's own function.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from service.domain.events import EVENT_TYPES, UPCASTERS, Event

_ENCODER = msgspec.json.Encoder(order="sorted")
# A quick, exact-when-negative test for NaN and infinity: msgpack writes every float as
# float64 (0xcb) and a non-finite one has all exponent bits set. A match may also be
# bytes inside a string; the exact walk in encode_json then decides.
_MSGPACK = msgspec.msgpack.Encoder()
_MAYBE_NON_FINITE = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]")
# Runs of 19 digits or more, found as runs of 19 zeros once every digit reads as a zero:
# bytes.translate and bytes.find take 0.4 ms over a batch replay's 487 KB chunk, whose
# encoding takes 0.5 ms; a regex scan took 4.8 ms (a run of digits) to 8.7 ms (the run
# with its context).
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19
_BEFORE_NUMBER = (b"", b":", b",", b"[")
_AFTER_INTEGER = (b"", b",", b"]", b"}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


# Version 4 (random) UUIDs, built the way uuid.uuid4 builds them minus its argument
# checks: every event written gets one (30,000 for a batch of 10,000 replays), and
# uuid.uuid4 took 7.5-8.8 us of that path's time where this takes 2.8 us. UUID keeps
# its value in the slots ``int`` and ``is_safe`` (CPython 3.11-3.14); the test of this
# function compares its results with uuid.UUID's own parsing.
_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_V4_SET = (0x4000 << 64) | (0x8000 << 48)
_new_uuid = object.__new__
_set_slot = object.__setattr__


def new_event_id() -> uuid.UUID:
    """A fresh random (version 4) UUID."""
    made = _new_uuid(uuid.UUID)
    _set_slot(made, "int", (int.from_bytes(os.urandom(16)) & _V4_CLEAR) | _V4_SET)
    _set_slot(made, "is_safe", uuid.SafeUUID.unknown)
    return made


class UnstorableEvent(ValueError):
    """The event holds a value Postgres jsonb cannot store (NUL, NaN, infinity)."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be appended, with its idempotency key and metadata."""

    event: Event
    metadata: Mapping[str, Any] = field(default_factory=dict)
    event_id: uuid.UUID = field(default_factory=new_event_id)


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as the log holds it."""

    global_position: int
    transaction_id: int
    stream_id: str
    stream_version: int
    event_id: uuid.UUID
    event_type: str
    schema_version: int
    data: str
    metadata: str
    recorded_at: datetime
    prev_hash: bytes
    hash: bytes

    def decode(self) -> Event:
        """The typed event, upcast to the current schema version."""
        return decode_event(self.event_type, self.schema_version, self.data)

    def metadata_dict(self) -> dict[str, Any]:
        """The metadata as a dict."""
        result: dict[str, Any] = msgspec.json.decode(self.metadata)
        return result


def encode_json(value: Any, name: str = "value") -> str:
    """JSON text for a jsonb column, refusing what jsonb cannot hold."""
    try:
        raw = _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise UnstorableEvent(str(exc)) from exc
    if b"\\u0000" in raw:
        raise UnstorableEvent("jsonb cannot store the NUL character (\\u0000)")
    # jsonb would keep any integer, but the log's readers cast counts to bigint (the
    # projections) and read them as 64-bit: one beyond that would stop them for good.
    if _may_hold_long_integer(raw):
        where = _first(msgspec.to_builtins(value), name, _beyond_64_bits)
        if where is not None:
            raise UnstorableEvent(f"{where} is an integer beyond 64 bits")
    # msgspec writes NaN and infinity as null, at any depth: the value would be lost
    # silently (or stored where a float is required and fail to decode later).
    if b"null" in raw and _MAYBE_NON_FINITE.search(_MSGPACK.encode(value)):
        where = _first(msgspec.to_builtins(value), name, _non_finite)
        if where is not None:
            raise UnstorableEvent(f"{where} is not a finite number")
    return raw.decode()


def _may_hold_long_integer(raw: bytes) -> bool:
    """Whether JSON text as msgspec writes it (no spaces) holds an integer of 19 digits
    or more, which may not fit 64 bits: a run of digits that starts a value (after an
    optional minus) and ends it. Not the digits of a float (a point or an exponent is
    next to them), which nearly every batch of replay events has; a string can still
    look like one, and the exact walk then decides."""
    flat = raw.translate(_DIGITS_AS_ZEROS)
    at = flat.find(_NINETEEN_DIGITS)  # the leftmost: a run's first digit
    while at != -1:
        end = at + len(_NINETEEN_DIGITS)
        while flat[end : end + 1] == b"0":
            end += 1
        start = at - 1 if flat[at - 1 : at] == b"-" else at
        if (
            flat[max(start - 1, 0) : start] in _BEFORE_NUMBER
            and flat[end : end + 1] in _AFTER_INTEGER
        ):
            return True
        at = flat.find(_NINETEEN_DIGITS, end)
    return False


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _beyond_64_bits(value: Any) -> bool:
    return isinstance(value, int) and not -(2**63) <= value < 2**63


def _first(value: Any, path: str, wrong: Callable[[Any], bool]) -> str | None:
    """The path of the first value inside a JSON-like value that is ``wrong``, if any."""
    if wrong(value):
        return path
    items: Any = value.items() if isinstance(value, dict) else None
    if isinstance(value, list | tuple):
        items = enumerate(value)
    for key, item in items or ():
        found = _first(item, f"{path}.{key}", wrong)
        if found is not None:
            return found
    return None


def encode_event(event: Event) -> str:
    """The data column for an event (its fields, without the type name), checked to
    decode as its type again (see ``check_decodable``)."""
    data = encode_json(event, event.type)
    check_decodable(event.type, data)
    return data


# Structs are not validated when built in code, so a wrong value (a string outside a
# Literal, a str where an int belongs) would be stored, and an event that no longer
# decodes stays in an immutable log for good: every reader that folds it would fail on
# it forever. Appends therefore decode what they store as its type first (about 1 us
# an event).
_DECODERS = {name: msgspec.json.Decoder(cls) for name, cls in EVENT_TYPES.items()}


def check_decodable(event_type: str, data: str | bytes) -> None:
    """Raise UnstorableEvent unless ``data`` decodes as the current ``event_type``."""
    decoder = _DECODERS.get(event_type)
    if decoder is None:
        raise UnstorableEvent(f"unknown event type {event_type!r}")
    try:
        decoder.decode(data)
    except msgspec.DecodeError as exc:  # also msgspec.ValidationError
        raise UnstorableEvent(f"{event_type} would not decode: {exc}") from exc


def decode_event(event_type: str, schema_version: int, data: str | bytes) -> Event:
    """Decode stored data into its event type, applying upcasters for old versions."""
    cls = EVENT_TYPES.get(event_type)
    if cls is None:
        raise ValueError(f"unknown event type {event_type!r}")
    if schema_version != cls.schema_version:
        payload: Any = msgspec.json.decode(data)
        version = schema_version
        while version < cls.schema_version:
            payload = UPCASTERS[(event_type, version)](payload)
            version += 1
        return msgspec.convert(payload, cls)
    return msgspec.json.decode(data, type=cls)


def genesis_hash(stream_id: str) -> bytes:
    """The prev_hash of a stream's first event: binds the chain to the stream id."""
    return hashlib.sha256(f"fusion-ledger/stream/{stream_id}".encode()).digest()


def epoch_microseconds(moment: datetime) -> int:
    """Microseconds since the Unix epoch, exactly (no float rounding)."""
    return (moment - _EPOCH) // _MICROSECOND


def canonical_bytes(
    event_id: uuid.UUID,
    event_type: str,
    schema_version: int,
    recorded_at: datetime,
    data_text: str,
    metadata_text: str,
) -> bytes:
    """Canonical bytes of a stored event; data and metadata are jsonb's text form."""
    return b"".join(
        (
            event_id.bytes,
            event_type.encode(),
            b"\x00",
            struct.pack(">h", schema_version),
            struct.pack(">q", epoch_microseconds(recorded_at)),
            data_text.encode(),
            b"\x00",
            metadata_text.encode(),
        )
    )


def chain_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    """hash = sha256(prev_hash || canonical bytes)."""
    return hashlib.sha256(prev_hash + canonical).digest()


def recorded_event_hash(prev_hash: bytes, row: RecordedEvent) -> bytes:
    """Recompute a recorded event's hash from its stored columns."""
    return chain_hash(
        prev_hash,
        canonical_bytes(
            row.event_id,
            row.event_type,
            row.schema_version,
            row.recorded_at,
            row.data,
            row.metadata,
        ),
    )
