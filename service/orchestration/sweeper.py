"""Closes runs left open by a crash: run.failed (reason abandoned).

A run is abandoned when its last event is not terminal and its own deadline plus a
grace period has passed. The close is appended with the exact version read, so a run
that is still progressing somewhere (another replica) wins and is left alone.

The first sweep of a process looks at every run and replay stream, and so does every
FULL_SWEEP_EVERY-th; the others only at streams created since a watermark: everything
older had passed its deadline when an earlier sweep looked, and was closed then,
unless that sweep left it open (a run this process still drives, one that moved on
meanwhile, or one beyond its row limit), in which case the watermark stays at or
before it. A stream whose creating transaction stayed open for longer than the window
(created_at is when it began) was invisible to that sweep and is older than the
watermark after it: the periodic full sweep is what finds such a run.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog

from service.domain.events import RunFailed
from service.orchestration.fusion import FusionRunner
from service.orchestration.planning import MAX_TIMEOUT_S
from service.store import EventStore, NewEvent, WrongExpectedVersion
from service.store.database import keep_running

log = structlog.get_logger("sweeper")

SWEEP_LIMIT = 500  # runs closed per sweep at most (the LIMIT below); the rest on the next
FULL_SWEEP_EVERY = 20  # every 10 minutes at the default interval
DEFAULT_TIMEOUT_S = 600.0  # the deadline of a stream without timeout_s (replays)
ALL_SQL = """
SELECT s.stream_id, s.version, s.created_at, first.metadata->>'tenant' AS tenant
FROM streams s
JOIN events last ON last.stream_id = s.stream_id AND last.stream_version = s.version
JOIN events first ON first.stream_id = s.stream_id AND first.stream_version = 1
WHERE s.category IN ('run', 'replay')
  AND last.event_type NOT IN ('answer.finalized', 'run.failed', 'outcome.recorded')
  AND first.recorded_at < now() - make_interval(
        secs => coalesce((first.data->>'timeout_s')::float8, $2) + $1)
ORDER BY s.created_at
LIMIT 500
"""
SINCE_SQL = ALL_SQL.replace("ORDER BY", "  AND s.created_at >= $3\nORDER BY")
assert f"LIMIT {SWEEP_LIMIT}" in ALL_SQL
# Beyond the longest deadline (MAX_TIMEOUT_S) and the grace: room for clocks and commits.
MARGIN_S = 60.0


class Sweeper:
    """Sweeps, keeping the watermark between sweeps (in memory: a new process starts
    with a full sweep)."""

    def __init__(self, store: EventStore, grace_s: float = 60.0) -> None:
        self.store = store
        self.grace_s = grace_s
        self.since: datetime | None = None  # streams created before this were handled
        self.sweeps = 0

    async def sweep(self, owned: frozenset[uuid.UUID] = frozenset()) -> int:
        """Close every abandoned run since the watermark; returns how many were closed."""
        started: datetime = await self.store.pool.fetchval("SELECT now()")
        full = self.since is None or self.sweeps % FULL_SWEEP_EVERY == 0
        self.sweeps += 1
        if full:
            rows = await self.store.pool.fetch(ALL_SQL, self.grace_s, DEFAULT_TIMEOUT_S)
        else:
            rows = await self.store.pool.fetch(
                SINCE_SQL, self.grace_s, DEFAULT_TIMEOUT_S, self.since
            )
        closed, left_open = await _close(self.store, rows, owned)
        # Every stream created before this had passed its deadline when this sweep looked.
        longest = max(MAX_TIMEOUT_S, DEFAULT_TIMEOUT_S)
        since = started - timedelta(seconds=longest + self.grace_s + MARGIN_S)
        if left_open:
            since = min(since, *left_open)
        if len(rows) == SWEEP_LIMIT:  # the rest come after the last row seen
            since = min(since, rows[-1]["created_at"])
        self.since = since
        return closed


async def sweep_once(
    store: EventStore, grace_s: float = 60.0, owned: frozenset[uuid.UUID] = frozenset()
) -> int:
    """One full sweep (every run and replay stream); returns how many were closed."""
    return await Sweeper(store, grace_s).sweep(owned)


async def _close(
    store: EventStore, rows: Sequence[Any], owned: frozenset[uuid.UUID]
) -> tuple[int, list[datetime]]:
    """Close the abandoned runs found; how many, and when the ones left open began."""
    closed, left_open = 0, []
    for row in rows:
        stream_id: str = row["stream_id"]
        if uuid.UUID(stream_id.partition("-")[2]) in owned:
            left_open.append(row["created_at"])  # this process still drives it
            continue
        event = RunFailed(reason="abandoned", message="run found open after its deadline")
        metadata = {
            "correlation_id": stream_id.partition("-")[2],
            "causation_id": None,
            "tenant": row["tenant"] or "default",
            "actor": "sweeper",
        }
        try:
            await store.append_to_stream(stream_id, [NewEvent(event, metadata)], row["version"])
        except WrongExpectedVersion:
            left_open.append(row["created_at"])  # it moved on: someone is still working on it
            continue
        closed += 1
        log.warning("run.abandoned", stream_id=stream_id)
    return closed, left_open


async def sweep_forever(
    store: EventStore, runner: FusionRunner, interval_s: float = 30.0, grace_s: float = 60.0
) -> None:
    """Sweep at start and then every interval, until cancelled or the pool closes."""
    sweeper = Sweeper(store, grace_s)
    await keep_running(
        store.pool,
        lambda: sweeper.sweep(runner.owned_run_ids()),
        pause_s=interval_s,
        failure="sweeper.failed",
    )
