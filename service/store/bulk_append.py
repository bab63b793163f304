"""Appending many new streams in one statement: ``append_new_streams`` in
schema/migrations/0020_append_new_streams.sql, the batch path of the event log.

For writers that create thousands of short streams (batch replays): the same rules
as ``EventStore.append_to_stream`` with ``NO_STREAM`` for every stream, the same hash
chains, all or nothing, at a fraction of the per-stream cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from service.store.codec import NewEvent
from service.store.database import Connection
from service.store.errors import EventIdConflict, WrongExpectedVersion
from service.store.postgres import NO_STREAM, EventStore, event_columns

APPEND_NEW_STREAMS_SQL = """
SELECT append_new_streams($1::text[], $2::uuid[], $3::text[], $4::smallint[],
                          $5::jsonb[], $6::jsonb[])
"""


async def append_new_streams(
    store: EventStore,
    streams: Sequence[tuple[str, Sequence[NewEvent]]],
    *,
    connection: Connection | None = None,
) -> int:
    """Create every stream with its events, atomically; returns how many streams.

    Raises WrongExpectedVersion when any of the streams exists (nothing is written),
    EventIdConflict when an event id is taken.
    """
    stream_ids: list[str] = []
    events: list[NewEvent] = []
    for stream_id, stream_events in streams:
        if not stream_events:
            raise ValueError(f"no events for {stream_id}")
        stream_ids.extend([stream_id] * len(stream_events))
        events.extend(stream_events)
    if not events:
        return 0
    args = (stream_ids, *event_columns(events))
    try:
        runner = connection if connection is not None else store.pool
        created: int = await runner.fetchval(APPEND_NEW_STREAMS_SQL, *args)
    except asyncpg.PostgresError as exc:
        code = getattr(exc, "sqlstate", None)
        if code == "FL409":  # DETAIL names the first stream that exists
            existing = (getattr(exc, "detail", "") or "").removeprefix("stream=")
            raise WrongExpectedVersion(existing, NO_STREAM, "exists") from exc
        if isinstance(exc, asyncpg.UniqueViolationError):
            raise EventIdConflict(str(exc)) from exc
        raise
    return created
