"""Closes runs left open by a crash: run.failed (reason abandoned).

A run is abandoned when its last event is not terminal and its own deadline plus a
grace period has passed. The close is appended with the exact version read, so a run
that is still progressing somewhere (another replica) wins and is left alone.
"""

from __future__ import annotations

import uuid

import structlog

from service.domain.events import RunFailed
from service.orchestration.fusion import FusionRunner
from service.store import EventStore, NewEvent, WrongExpectedVersion
from service.store.database import keep_running

log = structlog.get_logger("sweeper")

OPEN_RUNS_SQL = """
SELECT s.stream_id, s.version, first.metadata->>'tenant' AS tenant
FROM streams s
JOIN events last ON last.stream_id = s.stream_id AND last.stream_version = s.version
JOIN events first ON first.stream_id = s.stream_id AND first.stream_version = 1
WHERE s.category IN ('run', 'replay')
  AND last.event_type NOT IN ('answer.finalized', 'run.failed', 'outcome.recorded')
  AND first.recorded_at < now() - make_interval(
        secs => coalesce((first.data->>'timeout_s')::float8, 600) + $1)
ORDER BY s.created_at
LIMIT 500
"""


async def sweep_once(
    store: EventStore, grace_s: float = 60.0, owned: frozenset[uuid.UUID] = frozenset()
) -> int:
    """Close every abandoned run; returns how many were closed."""
    closed = 0
    for row in await store.pool.fetch(OPEN_RUNS_SQL, grace_s):
        stream_id: str = row["stream_id"]
        if uuid.UUID(stream_id.partition("-")[2]) in owned:
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
            continue  # it moved on: someone is still working on it
        closed += 1
        log.warning("run.abandoned", stream_id=stream_id)
    return closed


async def sweep_forever(
    store: EventStore, runner: FusionRunner, interval_s: float = 30.0, grace_s: float = 60.0
) -> None:
    """Sweep at start and then every interval, until cancelled or the pool closes."""
    await keep_running(
        store.pool,
        lambda: sweep_once(store, grace_s, runner.owned_run_ids()),
        pause_s=interval_s,
        failure="sweeper.failed",
    )
