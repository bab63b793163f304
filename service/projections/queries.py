"""Statistics over the read models: profiles, failures, co-failures, judges.

Every answer is limited to one tenant, names the read models' checkpoint and how far
they are behind the log, and can be asked ``as_of`` an earlier checkpoint, time or
position (runner.as_of rebuilds the read models up to it inside a transaction, so the
same queries answer). Filters are checked before any query runs: a bad one raises
``BadQuery`` (a 400 over HTTP, a usage error in the CLI).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import asyncpg
import msgspec

from service.domain.beta import beta_quantile
from service.domain.events import ERROR_KINDS
from service.projections.definitions import LATENCY_BOUNDS_MS
from service.projections.runner import Lag, as_of, head, lag_after, read_checkpoint
from service.store import Checkpoint
from service.store.database import Connection

GROUP_DIMENSIONS = ("model", "category", "error_kind", "day")
_CHECKPOINT = re.compile(r"^(\d+):(\d+)$")


MAX_POSITION = 2**63 - 1  # global positions are bigints


class BadQuery(ValueError):
    """A filter or option that cannot be answered; the message says which and why."""


class StatsAnswer(msgspec.Struct, frozen=True):
    """Rows plus where the read models stood when they answered."""

    rows: list[dict[str, Any]]
    checkpoint: str
    lag: Lag
    as_of: str | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """A time window, [since, until)."""

    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.since and self.until and self.since >= self.until:
            raise BadQuery(f"since ({self.since.isoformat()}) is not before until "
                           f"({self.until.isoformat()})")  # fmt: skip


def parse_time(name: str, text: str | None) -> datetime | None:
    """An ISO 8601 date or time (UTC unless it says otherwise)."""
    if text is None or text == "":
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadQuery(f"{name}: {text!r} is not an ISO 8601 date or time") from None
    aware = aware_moment(moment)  # the day arithmetic works in UTC
    if aware is None:
        raise BadQuery(f"{name}: {text!r} is out of range")
    return aware


def aware_moment(moment: datetime) -> datetime | None:
    """The moment (a naive one taken as UTC); None when it lies beyond what UTC can
    hold (year 1 or 9999 with an offset), which no query could use."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    try:
        aware.astimezone(UTC)
    except OverflowError:
        return None
    return aware


def parse_group_by(text: str | None, default: Sequence[str] = ("model",)) -> tuple[str, ...]:
    """'model,category' -> ('model', 'category'); unknown names are refused."""
    if text is None or not text.strip():
        return tuple(default)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in GROUP_DIMENSIONS]
    if unknown:
        raise BadQuery(f"group_by: unknown {', '.join(map(repr, unknown))}; "
                       f"choose from {', '.join(GROUP_DIMENSIONS)}")  # fmt: skip
    if len(set(names)) != len(names):
        raise BadQuery("group_by: a dimension is named twice")
    return names


def check_error_kind(kind: str | None) -> str | None:
    if kind is not None and kind not in ERROR_KINDS:
        raise BadQuery(f"error_kind: {kind!r} is not one of {', '.join(ERROR_KINDS)}")
    return kind


# as_of a time: the log is read in (transaction_id, global_position) order, and an
# event's recorded_at is its transaction's start, but its transaction id is taken at
# the first write. So an append that began after t can come before one that began at
# or before t; "up to the last event recorded by t" would count the later one. The
# answer is the stretch of the log before the first event recorded after t: nothing
# recorded after t, and everything a reader (so the live read models) could see at t,
# because an event visible at t lies before every transaction that began after t (it
# may add appends begun by t and committed after it: without commit times, the most
# exact prefix there is). Both statements are bounded by the head found first, below
# which no commit can add anything.
FIRST_RECORDED_AFTER_SQL = """
SELECT transaction_id::text::bigint AS xid, global_position AS pos FROM events
WHERE (transaction_id, global_position) <= ($2::text::xid8, $3::bigint) AND recorded_at > $1
ORDER BY transaction_id, global_position LIMIT 1
"""
LAST_BEFORE_SQL = """
SELECT transaction_id::text::bigint AS xid, global_position AS pos FROM events
WHERE (transaction_id, global_position) < ($1::text::xid8, $2::bigint)
ORDER BY transaction_id DESC, global_position DESC LIMIT 1
"""
EVENT_AT_SQL = "SELECT transaction_id::text::bigint AS xid FROM events WHERE global_position = $1"
# Whether the log up to the head holds a position above $1 (a position with no event
# below one that has is refused: "the head" would count the higher one).
HIGHER_POSITION_SQL = """
SELECT EXISTS (SELECT 1 FROM events WHERE global_position > $1
               AND (transaction_id, global_position) <= ($2::text::xid8, $3::bigint))
"""


async def resolve_as_of(conn: Connection, text: str) -> Checkpoint:
    """'txid:position' (a checkpoint as answers print it), a global position, or a time.

    A position means every event up to and including it in log order (transaction id,
    then position: what the read models had applied when it was the last). A time
    means the log before its first event recorded after that time. Beyond the log's
    gap-safe head means the head.
    """
    text = text.strip()
    found = _CHECKPOINT.match(text)
    position = not found and text.isascii() and text.isdigit()
    moment = None if found or position else parse_time("as_of", text)  # 4xx first
    if position and int(text) > MAX_POSITION:
        raise BadQuery(f"as_of: {text} is beyond any position (at most {MAX_POSITION})")
    last = await head(conn)
    bound = (str(last.transaction_id), last.global_position)
    if found:
        return min(Checkpoint(int(found.group(1)), int(found.group(2))), last)
    if moment is None:  # a global position
        row = await conn.fetchrow(EVENT_AT_SQL, int(text))
        if row is not None:
            return min(Checkpoint(row["xid"], int(text)), last)
        if not await conn.fetchval(HIGHER_POSITION_SQL, int(text), *bound):
            return last
        raise BadQuery(f"as_of: no event at position {text}")
    late = await conn.fetchrow(FIRST_RECORDED_AFTER_SQL, moment, *bound)
    if late is None:
        return last
    row = await conn.fetchrow(LAST_BEFORE_SQL, str(late["xid"]), late["pos"])
    return Checkpoint() if row is None else Checkpoint(row["xid"], row["pos"])


# --- profiles -------------------------------------------------------------------------

PROFILES_SQL = """
SELECT model, category, sum(gt_right) AS right_, sum(gt_wrong) AS wrong,
       sum(judge_agree) AS agree, sum(judge_disagree) AS disagree, sum(calls) AS calls,
       sum(failures) AS failures, sum(cost_usd) AS cost_usd, sum(latency_ms) AS latency_ms
FROM model_error_profile
WHERE tenant = $1 AND ($2::text IS NULL OR model = $2) AND ($3::text IS NULL OR category = $3)
GROUP BY model, category
ORDER BY model, category
"""


@functools.lru_cache(maxsize=65_536)
def beta_summary(right: float, wrong: float) -> tuple[float, float, float]:
    """Posterior mean and equal-tailed 90% interval of accuracy, Beta(1 + right, 1 + wrong).

    The interval is exact: the posterior's 5% and 95% quantiles (a uniform prior
    updated by the counts; with none, [0.05, 0.95]). 0.07-0.3 ms a pair of counts, so
    answers remember them (statistics are asked again and again at one checkpoint).
    Counts below zero (read models built by an older rule and not rebuilt) count as 0.
    """
    a, b = 1.0 + max(right, 0.0), 1.0 + max(wrong, 0.0)
    return a / (a + b), beta_quantile(0.05, a, b), beta_quantile(0.95, a, b)


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def profile_row(r: asyncpg.Record) -> dict[str, Any]:
    right, wrong = int(r["right_"]), int(r["wrong"])
    agree, disagree = int(r["agree"]), int(r["disagree"])
    calls, failures = int(r["calls"]), int(r["failures"])
    mean, low, high = beta_summary(right, wrong)
    return {
        "model": r["model"],
        "category": r["category"],
        "n": right + wrong,
        "right": right,
        "wrong": wrong,
        "accuracy": mean,
        "accuracy_low": low,
        "accuracy_high": high,
        "beta_alpha": 1 + right,
        "beta_beta": 1 + wrong,
        "judged": agree + disagree,
        "judge_agreement": _ratio(agree, agree + disagree),
        "calls": calls,
        "failures": failures,
        "failure_rate": _ratio(failures, calls),
        "mean_cost_usd": _ratio(float(r["cost_usd"]), calls - failures),
        "mean_latency_ms": _ratio(float(r["latency_ms"]), calls),
    }


async def _profiles(
    conn: Connection, tenant: str, model: str | None, category: str | None
) -> list[dict[str, Any]]:
    return [profile_row(r) for r in await conn.fetch(PROFILES_SQL, tenant, model, category)]


# --- failures ------------------------------------------------------------------------

_DIM_SQL = {"model": "model", "category": "category", "day": "day"}


# The calls a failures question counts. A question that names days (grouped by day, or
# a window) reads the daily rows; the others read the day-less totals, about a tenth as
# many rows (the same calls: one projection statement writes both). $4 and $5, the
# window, are then always null: the guard answers nothing rather than ignore a window.
def _failure_base(daily: bool) -> str:
    table, day, window = (
        (
            "model_call_stats",
            "day, ",
            "($4::date IS NULL OR day >= $4) AND ($5::date IS NULL OR day < $5)",
        )
        if daily
        else ("model_call_totals", "", "$4::date IS NULL AND $5::date IS NULL")
    )
    return f"""
base AS (
    SELECT model, category, {day}outcome, latency_bucket, calls, latency_ms, input_tokens,
           output_tokens, cost_usd
    FROM {table}
    WHERE tenant = $1 AND ($2::text IS NULL OR model = $2)
      AND ($3::text IS NULL OR category = $3)
      AND {window}
)"""


def _failures_sql(group_by: Sequence[str], windowed: bool) -> str:
    base = _failure_base(daily=windowed or "day" in group_by)
    dims = [_DIM_SQL[d] for d in group_by if d != "error_kind"]
    cols = ", ".join(dims)
    select_dims = f"{cols}, " if dims else ""
    if "error_kind" in group_by:
        # One pass: sums per group and outcome; a group's calls are the sum over its
        # outcomes (a window over the few grouped rows), then the failures are kept.
        partition = f"PARTITION BY {cols}" if dims else ""
        return f"""
WITH {base},
outcomes AS (
    SELECT {select_dims}outcome, sum(calls)::bigint AS n, sum(latency_ms) AS latency_ms
    FROM base GROUP BY {select_dims}outcome
)
SELECT {select_dims}error_kind, calls, failures, latency_ms
FROM (SELECT {select_dims}outcome AS error_kind, sum(n) OVER ({partition})::bigint AS calls,
             n AS failures, latency_ms
      FROM outcomes) AS o
WHERE error_kind <> 'ok' AND ($6::text IS NULL OR error_kind = $6)
ORDER BY {select_dims}failures DESC, error_kind
"""
    # Sums per group and latency bucket, then per group with its histogram as two
    # arrays, so one row per group reaches Python: the bucket rows merged in Python cost
    # 14-20 ms for 2,400 of them (grouped by model and day), most of it decoding the
    # numeric sums, which are cast to bigint here.
    return f"""
WITH {base},
buckets AS (
    SELECT {select_dims}latency_bucket, sum(calls) AS calls,
           sum(calls) FILTER (WHERE outcome <> 'ok'
                              AND ($6::text IS NULL OR outcome = $6)) AS failures,
           sum(latency_ms) AS latency_ms, sum(input_tokens) AS input_tokens,
           sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd
    FROM base GROUP BY {select_dims}latency_bucket
)
SELECT {select_dims}sum(calls)::bigint AS calls, coalesce(sum(failures), 0)::bigint AS failures,
       sum(latency_ms) AS latency_ms, sum(input_tokens)::bigint AS input_tokens,
       sum(output_tokens)::bigint AS output_tokens, sum(cost_usd) AS cost_usd,
       array_agg(latency_bucket) AS buckets, array_agg(calls::bigint) AS bucket_calls
FROM buckets
{f"GROUP BY {cols}" if dims else "HAVING count(*) > 0"}
"""


def histogram_quantile(q: float, buckets: Mapping[int, int]) -> float | None:
    """The q-quantile from latency-bucket counts, interpolating inside the bucket
    (the bucket above the last bound reports that bound)."""
    total = sum(buckets.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for b in sorted(buckets):
        n = buckets[b]
        if seen + n >= rank and n > 0:
            lower = 0.0 if b == 0 else LATENCY_BOUNDS_MS[b - 1]
            if b >= len(LATENCY_BOUNDS_MS):
                return LATENCY_BOUNDS_MS[-1]
            upper = LATENCY_BOUNDS_MS[b]
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
    return LATENCY_BOUNDS_MS[-1]


def _day_text(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def failure_rows(
    records: Sequence[asyncpg.Record], group_by: Sequence[str]
) -> list[dict[str, Any]]:
    """Rows of the failures answer from the query's records (see _failures_sql)."""
    if "error_kind" in group_by:
        out = []
        for r in records:
            row: dict[str, Any] = {d: _day_text(r[d]) for d in group_by}
            calls, failures = int(r["calls"]), int(r["failures"])
            row.update(
                calls=calls,
                failures=failures,
                failure_rate=_ratio(failures, calls),
                mean_latency_ms=_ratio(float(r["latency_ms"]), failures),
            )
            out.append(row)
        return out
    rows = []
    for r in records:
        row = {d: _day_text(r[d]) for d in group_by}
        calls, failures = int(r["calls"]), int(r["failures"])
        hist = dict(zip(r["buckets"] or (), r["bucket_calls"] or (), strict=True))
        row.update(
            calls=calls,
            failures=failures,
            failure_rate=_ratio(failures, calls),
            successes=calls - failures,
            mean_latency_ms=_ratio(float(r["latency_ms"]), calls),
            latency_p50_ms=histogram_quantile(0.5, hist),
            latency_p95_ms=histogram_quantile(0.95, hist),
            input_tokens=int(r["input_tokens"]),
            output_tokens=int(r["output_tokens"]),
            cost_usd=float(r["cost_usd"]),
        )
        rows.append(row)
    rows.sort(key=lambda row: (-row["calls"], *(str(row[d]) for d in group_by)))
    return rows


# --- co-failures ----------------------------------------------------------------------

CO_FAILURES_SQL = """
SELECT category, model_a, model_b, sum(both_wrong) AS both_wrong,
       sum(one_wrong) AS one_wrong, sum(both_right) AS both_right
FROM co_failure
WHERE tenant = $1 AND ($2::text IS NULL OR model_a = $2 OR model_b = $2)
  AND ($3::text IS NULL OR category = $3)
GROUP BY category, model_a, model_b
HAVING sum(both_wrong + one_wrong + both_right) >= $4
ORDER BY sum(both_wrong)::float8 / sum(both_wrong + one_wrong + both_right) DESC,
         category, model_a, model_b
"""


def co_failure_row(r: asyncpg.Record) -> dict[str, Any]:
    both, one, right = int(r["both_wrong"]), int(r["one_wrong"]), int(r["both_right"])
    n = both + one + right
    return {
        "category": r["category"],
        "model_a": r["model_a"],
        "model_b": r["model_b"],
        "n": n,
        "both_wrong": both,
        "one_wrong": one,
        "both_right": right,
        "both_wrong_rate": _ratio(both, n),
        # Of the runs where at least one was wrong, how often both were.
        "co_failure_rate": _ratio(both, both + one),
    }


# --- judges ---------------------------------------------------------------------------

JUDGES_SQL = """
SELECT judge, category, runs, replays, fallbacks, failed, graded, right_, compared, agreed,
       cost_usd / runs AS mean_cost_usd, latency_ms / runs AS mean_latency_ms
FROM judge_profile
WHERE tenant = $1 AND runs > 0 AND ($2::text IS NULL OR category = $2)
  AND ($3::text IS NULL OR judge = $3)
ORDER BY category, right_::float8 / greatest(graded, 1) DESC, judge
"""


def judge_row(r: asyncpg.Record) -> dict[str, Any]:
    graded, right = int(r["graded"]), int(r["right_"])
    compared, agreed = int(r["compared"]), int(r["agreed"])
    mean, low, high = beta_summary(right, graded - right)
    return {
        "judge": r["judge"],
        "category": r["category"],
        "runs": int(r["runs"]),
        "replays": int(r["replays"]),
        "fallbacks": int(r["fallbacks"]),
        "failed": int(r["failed"]),
        "graded": graded,
        "right": right,
        "accuracy": _ratio(right, graded),
        "accuracy_low": low if graded else None,
        "accuracy_high": high if graded else None,
        "posterior_accuracy": mean,
        "compared": compared,
        "agreement": _ratio(agreed, compared),
        "mean_cost_usd": None if r["mean_cost_usd"] is None else float(r["mean_cost_usd"]),
        "mean_latency_ms": None if r["mean_latency_ms"] is None else float(r["mean_latency_ms"]),
    }


# --- answering ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """One statistics question: which, with its checked filters."""

    kind: str  # profiles | failures | co-failures | judges
    tenant: str
    model: str | None = None
    category: str | None = None
    error_kind: str | None = None
    judge: str | None = None
    group_by: tuple[str, ...] = ("model",)
    window: Window = Window()
    min_n: int = 1
    as_of: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in PROJECTION_OF:
            raise BadQuery(f"unknown statistics {self.kind!r}")
        check_error_kind(self.error_kind)
        if self.min_n < 0:
            raise BadQuery("min_n: must be 0 or more")


def failures_query(
    tenant: str,
    *,
    group_by: str | None,
    model: str | None,
    category: str | None,
    error_kind: str | None,
    since: str | None,
    until: str | None,
    as_of: str | None,
) -> Query:
    """The failures question from its text filters, as the API and the CLI take them."""
    return Query(
        "failures",
        tenant,
        model=model,
        category=category,
        error_kind=error_kind,
        group_by=parse_group_by(group_by),
        window=Window(_day("since", since), _day("until", until)),
        as_of=as_of,
    )


def _day(name: str, text: str | None) -> datetime | None:
    """A window edge for the call statistics, which count by UTC day: a date, or a time
    that is midnight UTC (any other time would silently stand for its whole day)."""
    moment = parse_time(name, text)
    if moment is not None and moment.astimezone(UTC).time() != datetime.min.time():
        day = moment.astimezone(UTC).date()  # since: from its day; until: through it
        near = day if name == "since" else day + timedelta(days=1) if day < date.max else day
        raise BadQuery(f"{name}: {text!r} is not a whole day; calls are counted per UTC "
                       f"day, so give a date such as {near}")  # fmt: skip
    return moment


PROJECTION_OF = {
    "profiles": "model_stats",
    "failures": "model_stats",
    "co-failures": "model_stats",
    "judges": "runs",
}


async def _rows(conn: Connection, q: Query) -> list[dict[str, Any]]:
    # (Inside the caller's transaction.) The filters are "$n IS NULL OR column = $n":
    # planned for the values at hand they vanish, while the generic plan Postgres
    # switches to after five runs of a prepared statement keeps them all; measured on
    # 34,000 call-stat rows: 15-34 ms per custom plan, 45-64 ms per generic one.
    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
    if q.kind == "profiles":
        return await _profiles(conn, q.tenant, q.model, q.category)
    if q.kind == "failures":
        since = q.window.since.astimezone(UTC).date() if q.window.since else None
        until = q.window.until.astimezone(UTC).date() if q.window.until else None
        rows = await conn.fetch(
            _failures_sql(q.group_by, windowed=since is not None or until is not None),
            q.tenant,
            q.model,
            q.category,
            since,
            until,
            q.error_kind,
        )
        return failure_rows(rows, q.group_by)
    if q.kind == "co-failures":
        rows = await conn.fetch(CO_FAILURES_SQL, q.tenant, q.model, q.category, q.min_n)
        return [co_failure_row(r) for r in rows]
    rows = await conn.fetch(JUDGES_SQL, q.tenant, q.category, q.judge)
    return [judge_row(r) for r in rows]


class _Blank(dict[str, Any]):
    """A record whose every field is 0: what a row made from it shows is its keys."""

    def __missing__(self, key: str) -> int:
        return 0


def answer_columns(q: Query) -> list[str]:
    """The columns of the query's rows, also when it has none (a CSV header): the keys
    of a row made from a blank record by the same function, so they cannot drift."""
    blank = cast(asyncpg.Record, _Blank())
    if q.kind == "profiles":
        return list(profile_row(blank))
    if q.kind == "failures":
        return list(failure_rows([blank], q.group_by)[0])
    if q.kind == "co-failures":
        return list(co_failure_row(blank))
    return list(judge_row(blank))


async def answer(conn: Connection, q: Query) -> StatsAnswer:
    """Answer the query from the read models (or as of an earlier point of the log)."""
    if q.as_of is not None:
        upto = await resolve_as_of(conn, q.as_of)
        async with as_of(conn, upto, [PROJECTION_OF[q.kind]]):  # only the one it reads
            rows = await _rows(conn, q)
        lag = await lag_after(conn, upto)
        return StatsAnswer(rows, str(upto), lag, as_of=str(upto))
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        checkpoint, _ = await read_checkpoint(conn, PROJECTION_OF[q.kind])
        rows = await _rows(conn, q)
        behind: Lag = await lag_after(conn, checkpoint)
    return StatsAnswer(rows, str(checkpoint), behind)
