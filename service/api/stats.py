"""Statistics: GET /v1/profiles, /v1/stats/failures, /v1/stats/co-failures,
/v1/stats/judges. JSON by default, CSV with ``Accept: text/csv``; every answer names
the read models' checkpoint and lag (in the body, and in headers for CSV)."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery, QueryParameter

from service.api.deps import Services, provide_services
from service.api.errors import Problem, problems
from service.projections.queries import (
    BadQuery,
    Query,
    StatsAnswer,
    answer,
    answer_columns,
    failures_query,
)

_DEPS = {"services": Provide(provide_services, sync_to_thread=False)}
CSV = "text/csv"


# An as_of answer rebuilds the projection it reads from the log's start (1,000,000
# events: about 9 s on 2 CPUs), in a transaction that, while it lasts, holds back every
# reader of the log (projections, the router, subscribers). One at a time per process,
# and no longer than this; the others are told to retry.
AS_OF_TIMEOUT_S = 60.0
AS_OF_RETRY_AFTER_S = 5


async def _answer_as_of(services: Services, query: Query) -> StatsAnswer:
    if services.as_of_slot.locked():
        raise Problem(
            503,
            "Busy",
            "another as_of answer is being computed here (each rebuilds the statistics "
            "from the log's start); retry shortly",
            headers={"retry-after": str(AS_OF_RETRY_AFTER_S)},
        )
    try:
        async with (
            services.as_of_slot,
            asyncio.timeout(AS_OF_TIMEOUT_S),
            services.store.pool.acquire() as conn,
        ):
            return await answer(conn, query)
    except TimeoutError:
        raise Problem(
            503,
            "as_of took too long",
            f"rebuilding the statistics as of {query.as_of} took over {AS_OF_TIMEOUT_S:g} s "
            "and was stopped; ask a later point, or use `fusion-ledger stats --as-of` "
            "against the database",
            headers={"retry-after": str(AS_OF_RETRY_AFTER_S)},
        ) from None


def to_csv(rows: list[dict[str, Any]], header: list[str]) -> str:
    """Rows as CSV with a header line; columns in first-seen order (``header`` when
    there are no rows: a client still sees what the columns are).

    A text cell that a spreadsheet would run as a formula (it starts with = + - @, a
    tab or a carriage return: a client's category, say) gets a leading apostrophe, as
    OWASP advises for CSV exports; numbers are written as they are."""
    columns: dict[str, None] = {} if rows else dict.fromkeys(header)
    for row in rows:
        columns.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _inert(v) for k, v in row.items()} for row in rows)
    return out.getvalue()


def _inert(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


async def respond(request: Request[Any, Any, Any], services: Services, build: Any) -> Response[Any]:
    """Check the query, answer it, and render JSON or CSV."""
    tenant = getattr(request.state, "tenant", "default")
    try:
        query: Query = build(tenant)
        if query.as_of is None:
            async with services.store.pool.acquire() as conn:
                result: StatsAnswer = await answer(conn, query)
        else:
            result = await _answer_as_of(services, query)
    except BadQuery as exc:
        raise Problem(400, "Bad statistics query", str(exc)) from None
    headers = {
        "x-projection-checkpoint": result.checkpoint,
        "x-projection-lag-events": str(result.lag.events),
        "x-projection-lag-seconds": f"{result.lag.seconds:.3f}",
    }
    if CSV in (request.headers.get("accept") or ""):
        return Response(to_csv(result.rows, answer_columns(query)), media_type=CSV, headers=headers)
    return Response(result, headers=headers)


@get("/v1/profiles", dependencies=_DEPS, summary="Model error profiles", responses=problems())
async def get_profiles(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    model: FromQuery[str | None] = None,
    category: FromQuery[str | None] = None,
    as_of: FromQuery[str | None] = None,
) -> Response[Any]:
    """Per model and category: ground-truth accuracy (Beta posterior), judge agreement,
    failure rate, mean cost and latency."""
    return await respond(
        request,
        services,
        lambda tenant: Query("profiles", tenant, model=model, category=category, as_of=as_of),
    )


@get("/v1/stats/failures", dependencies=_DEPS, summary="Model call failures", responses=problems())
async def get_failures(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    group_by: FromQuery[str | None] = None,
    model: FromQuery[str | None] = None,
    category: FromQuery[str | None] = None,
    error_kind: FromQuery[str | None] = None,
    since: FromQuery[str | None] = None,
    until: FromQuery[str | None] = None,
    as_of: FromQuery[str | None] = None,
) -> Response[Any]:
    """Calls, failures and failure rate grouped by any of model, category, error_kind,
    day (UTC); latency p50/p95, tokens and cost unless grouped by error kind."""
    return await respond(
        request,
        services,
        lambda tenant: failures_query(
            tenant,
            group_by=group_by,
            model=model,
            category=category,
            error_kind=error_kind,
            since=since,
            until=until,
            as_of=as_of,
        ),
    )


@get(
    "/v1/stats/co-failures",
    dependencies=_DEPS,
    summary="Models wrong together",
    responses=problems(),
)
async def get_co_failures(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    model: FromQuery[str | None] = None,
    category: FromQuery[str | None] = None,
    min_n: Annotated[int, QueryParameter(ge=0)] = 1,
    as_of: FromQuery[str | None] = None,
) -> Response[Any]:
    """Pairs of models graded on the same runs: both wrong, one wrong, both right."""
    return await respond(
        request,
        services,
        lambda tenant: Query(
            "co-failures", tenant, model=model, category=category, min_n=min_n, as_of=as_of
        ),
    )


@get("/v1/stats/judges", dependencies=_DEPS, summary="Judges compared", responses=problems())
async def get_judges(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    category: FromQuery[str | None] = None,
    judge: FromQuery[str | None] = None,
    as_of: FromQuery[str | None] = None,
) -> Response[Any]:
    """Per judge and category, replays included: accuracy against ground truth and
    agreement with other judges on the same runs."""
    return await respond(
        request,
        services,
        lambda tenant: Query("judges", tenant, category=category, judge=judge, as_of=as_of),
    )


STATS_ROUTES = [get_profiles, get_failures, get_co_failures, get_judges]
