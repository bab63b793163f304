"""GET /v1/runs and GET /v1/runs/{run_id}: listing, and one run's full provenance."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, QueryParameter

from service.api.deps import Services, provide_services
from service.api.errors import Problem, problems
from service.api.views import FusionResponse, fusion_view
from service.domain.runs import fold
from service.projections.queries import aware_moment

# The log itself, newest first through the (tenant, run.requested, position) index, each
# run's terminal event looked up through the (stream_id, version) index; the status
# filter applies before the LIMIT, so a page holds `limit` matching runs.
LIST_RUNS_SQL = """
SELECT * FROM (
    SELECT e.global_position, e.stream_id, e.recorded_at, e.data->>'category' AS category,
           e.data->>'preset' AS preset,
           (SELECT t.event_type FROM events t
             WHERE t.stream_id = e.stream_id
               AND t.event_type IN ('answer.finalized', 'run.failed') LIMIT 1) AS terminal
    FROM events e
    WHERE e.event_type = 'run.requested'
      AND e.metadata->>'tenant' = $1
      AND ($2::text IS NULL OR e.data->>'category' = $2)
      AND ($3::bigint IS NULL OR e.global_position < $3)
      AND ($4::timestamptz IS NULL OR e.recorded_at >= $4)
    ORDER BY e.global_position DESC
) AS runs
WHERE $6::text IS NULL OR coalesce(terminal, 'running') = $6
LIMIT $5
"""


class RunListItem(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    status: str
    category: str | None
    preset: str | None
    created_at: datetime
    position: int


class RunList(msgspec.Struct, frozen=True, kw_only=True):
    runs: list[RunListItem]
    next_before: int | None


class EventView(msgspec.Struct, frozen=True, kw_only=True):
    global_position: int
    stream_version: int
    event_id: str
    event_type: str
    schema_version: int
    recorded_at: datetime
    data: msgspec.Raw
    metadata: msgspec.Raw
    prev_hash: str
    hash: str


class RunDetail(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    summary: FusionResponse
    events: list[EventView]


_STATUS = {"answer.finalized": "finalized", "run.failed": "failed", None: "running"}
_TERMINAL = {"finalized": "answer.finalized", "failed": "run.failed", "running": "running"}
_DEPS = {"services": Provide(provide_services, sync_to_thread=False)}


@get("/v1/runs", dependencies=_DEPS, summary="List runs", responses=problems())
async def list_runs(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    category: FromQuery[str | None] = None,
    status: FromQuery[Literal["finalized", "failed", "running"] | None] = None,
    since: FromQuery[datetime | None] = None,
    before: Annotated[int | None, QueryParameter(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
) -> RunList:
    """Newest first; page with ``before`` (the ``next_before`` of the previous page)."""
    tenant = getattr(request.state, "tenant", "default")
    terminal = _TERMINAL[status] if status is not None else None
    if since is not None and (since := aware_moment(since)) is None:
        raise Problem(400, "Bad request", "since: out of range")
    rows = await services.store.pool.fetch(
        LIST_RUNS_SQL, tenant, category, before, since, limit, terminal
    )
    items = [
        RunListItem(
            run_id=r["stream_id"].removeprefix("run-"),
            status=_STATUS[r["terminal"]],
            category=r["category"],
            preset=r["preset"],
            created_at=r["recorded_at"],
            position=r["global_position"],
        )
        for r in rows
    ]
    next_before = rows[-1]["global_position"] if len(rows) == limit else None
    return RunList(runs=items, next_before=next_before)


@get(
    "/v1/runs/{run_id:str}",
    dependencies=_DEPS,
    summary="One run's provenance",
    responses=problems(404),
)
async def get_run(
    request: Request[Any, Any, Any], services: NamedDependency[Services], run_id: FromPath[str]
) -> RunDetail:
    """The run's summary and every event in order, with hashes."""
    try:
        parsed = uuid.UUID(run_id)
    except ValueError:
        raise Problem(404, "Run not found", f"{run_id!r} is not a run id") from None
    # A replay's id shows its own stream the same way (its request, the new judge's
    # events, its end): replays are provenance too.
    records = await services.store.read_stream(f"run-{parsed}") or (
        await services.store.read_stream(f"replay-{parsed}")
    )
    tenant = getattr(request.state, "tenant", "default")
    if not records or records[0].metadata_dict().get("tenant") != tenant:
        raise Problem(404, "Run not found", f"no run {parsed}")
    state = fold(r.decode() for r in records)
    events = [
        EventView(
            global_position=r.global_position,
            stream_version=r.stream_version,
            event_id=str(r.event_id),
            event_type=r.event_type,
            schema_version=r.schema_version,
            recorded_at=r.recorded_at,
            data=msgspec.Raw(r.data.encode()),
            metadata=msgspec.Raw(r.metadata.encode()),
            prev_hash=r.prev_hash.hex(),
            hash=r.hash.hex(),
        )
        for r in records
    ]
    return RunDetail(run_id=str(parsed), summary=fusion_view(str(parsed), state), events=events)
