"""Appending many new streams in one statement: ``append_new_streams`` in
schema/migrations/0032_append_new_streams_document.sql, the batch path of the log.

For writers that create thousands of short streams (batch replays): the same rules
as ``EventStore.append_to_stream`` with ``NO_STREAM`` for every stream, the same hash
chains, all or nothing, at a fraction of the per-stream cost. The events travel as
one JSON document (one encode here, one jsonb parse there), not as parallel arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from service.store.codec import (
    NewEvent,
    UnstorableEvent,
    check_decodable,
    encode_event,
    encode_json,
)
from service.store.database import Connection, again_if_lost
from service.store.errors import EventIdConflict, WrongExpectedVersion
from service.store.postgres import NO_STREAM, EventStore

APPEND_NEW_STREAMS_SQL = "SELECT append_new_streams($1::jsonb)"


async def append_new_streams(
    store: EventStore,
    streams: Sequence[tuple[str, Sequence[NewEvent]]],
    *,
    connection: Connection | None = None,
) -> int:
    """Create every stream with its events, atomically; returns how many streams.

    Raises WrongExpectedVersion when any of the streams exists (nothing is written),
    EventIdConflict when an event id is taken. On the pool, a statement whose connection
    was lost is sent again (again_if_lost); when the lost one had committed, the
    streams exist then, and WrongExpectedVersion says so as for any other writer's.
    """
    if not streams:
        return 0
    document = events_document(streams)
    try:
        if connection is not None:  # the caller's session (and transaction): no retry
            created: int = await connection.fetchval(APPEND_NEW_STREAMS_SQL, document)
        else:
            created = await again_if_lost(
                lambda: store.pool.fetchval(APPEND_NEW_STREAMS_SQL, document), "append_new_streams"
            )
    except asyncpg.PostgresError as exc:
        code = getattr(exc, "sqlstate", None)
        if code == "FL409":  # DETAIL names the first stream that exists
            existing = (getattr(exc, "detail", "") or "").removeprefix("stream=")
            raise WrongExpectedVersion(existing, NO_STREAM, "exists") from exc
        if isinstance(exc, asyncpg.UniqueViolationError):
            raise EventIdConflict(str(exc)) from exc
        raise
    store.notifier.poke()
    return created


def events_document(streams: Sequence[tuple[str, Sequence[NewEvent]]]) -> str:
    """The function's argument: [[stream_id, event_id, type, schema_version, data,
    metadata], ...] in order, encoded at once; UnstorableEvent names the event at fault."""
    rows: list[tuple[object, ...]] = []
    seen: set[str] = set()
    for stream_id, stream_events in streams:
        if not stream_events:
            raise ValueError(f"no events for {stream_id}")
        if stream_id in seen:  # the function chains a stream's events only when adjacent
            raise ValueError(f"{stream_id} is given twice")
        seen.add(stream_id)
        rows.extend(
            (stream_id, e.event_id, e.event.type, e.event.schema_version, e.event, dict(e.metadata))
            for e in stream_events
        )
    try:
        document = encode_json(rows, "events")
    except UnstorableEvent:
        for _, stream_events in streams:  # say which event, as a single append would
            for e in stream_events:
                encode_event(e.event)
                encode_json(dict(e.metadata), "metadata")
        raise
    for row in _ROWS.decode(document):  # each event decodes as its type
        check_decodable(row.event_type, row.data)
    return document


class _Row(msgspec.Struct, array_like=True):
    """A document row, read back to check each event's data against its type."""

    stream_id: str
    event_id: str
    event_type: str
    schema_version: int
    data: msgspec.Raw
    metadata: msgspec.Raw


_ROWS = msgspec.json.Decoder(list[_Row])
