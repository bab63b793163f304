"""The projection runner: applies the log to the read models, exactly once.

One step = one transaction: lock the projection's checkpoint row, find the end of the
next batch in gap-safe commit order (events of transactions older than every open one),
run the projection's statements over (checkpoint, end], advance the checkpoint, commit.
A crash anywhere rolls the whole step back, so nothing is lost or counted twice.

One owner per projection across processes: a session-level advisory lock, keyed by
schema and name, held for as long as the owner runs. Other workers try again every
poll interval, so one takes over within seconds when the owner dies (its connection
closes, Postgres drops the lock). The worker wakes on the log's NOTIFY and polls as a
fallback.

``rebuild`` builds a projection from position zero into shadow tables of the same
names in a scratch schema while the live ones keep serving, then swaps them in under
the checkpoint row's lock (the live runner waits at that lock for a moment, then
carries on from the rebuilt checkpoint). ``as_of`` builds the read models up to an
earlier checkpoint in temporary tables that shadow the live ones inside one
transaction, so every statistics query can answer "as the numbers stood then" with
the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import msgspec
import structlog

from service.projections.definitions import BY_NAME, PROJECTIONS, Projection, statement_args
from service.store import START, Checkpoint
from service.store.database import Connection, keep_running, stateful
from service.store.postgres import NOTIFY_CHANNEL

log = structlog.get_logger("projections")

BATCH_EVENTS: Final = 5_000
REBUILD_BATCH_EVENTS: Final = 5_000_000  # one pass: ranges cut from the middle cost more
LAG_COUNT_CAP: Final = 1_000_000

LOCK_SQL = (
    "SELECT pg_try_advisory_lock(hashtextextended(current_schema() || '/projection/' || $1, 0))"
)
UNLOCK_SQL = (
    "SELECT pg_advisory_unlock(hashtextextended(current_schema() || '/projection/' || $1, 0))"
)

CREATE_CHECKPOINT_SQL = """
INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING
"""
READ_CHECKPOINT_SQL = """
SELECT transaction_id, global_position, events FROM projection_checkpoints
WHERE name = $1 FOR UPDATE
"""
WRITE_CHECKPOINT_SQL = """
UPDATE projection_checkpoints
SET transaction_id = $2, global_position = $3, events = events + $4, updated_at = now()
WHERE name = $1
"""

# The end of the next batch: at most $3 committed events after the checkpoint, of
# transactions older than every open one (so nothing can still appear before it).
NEXT_BATCH_SQL = """
WITH next AS MATERIALIZED (
    SELECT transaction_id, global_position FROM events
    WHERE (transaction_id, global_position) > ($1::text::xid8, $2::bigint)
      AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY transaction_id, global_position
    LIMIT $3
)
SELECT (SELECT count(*) FROM next) AS n, transaction_id::text::bigint AS xid,
       global_position AS pos
FROM next ORDER BY transaction_id DESC, global_position DESC LIMIT 1
"""

# How many events lie in a range (after, upto]: a sequential count, 0.3 s per million
# events, where next_batch lists and sorts the positions (1.1 s).
COUNT_RANGE_SQL = """
SELECT count(*) FROM events e
WHERE (e.transaction_id, e.global_position) > ($1::text::xid8, $2::bigint)
  AND (e.transaction_id, e.global_position) <= ($3::text::xid8, $4::bigint)
"""

# A rebuild catches up with a growing log without blocking the live runner this many
# times (each pass up to the head as it was when the pass began); what comes after
# the last pass is applied under the checkpoint's lock, up to the head as it was then.
# Chasing the head until nothing new arrived never ended under steady appends.
REBUILD_CHASE_PASSES: Final = 3

# The gap-safe head of the log: the last event a reader may see now.
HEAD_SQL = """
SELECT transaction_id::text::bigint AS xid, global_position AS pos FROM events
WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY transaction_id DESC, global_position DESC LIMIT 1
"""

LAG_SQL = """
SELECT count(*) AS events,
       coalesce(extract(epoch FROM now() - min(recorded_at)), 0)::float8 AS seconds
FROM (SELECT recorded_at FROM events
      WHERE (transaction_id, global_position) > ($1::text::xid8, $2::bigint)
      ORDER BY transaction_id, global_position LIMIT $3) AS behind
"""


# Planner settings for every projection transaction. Row counts of the statements'
# CTEs and JSON array expansions are unknowable to the planner (it guesses millions
# where there are thousands, and the reverse), and on those guesses it picks sort-merge
# joins and sorted grouping on text keys, and JIT compilation, all of which measured
# slower than hashing in memory at every range size (ops/bench/README.md).
# Custom plans too: a generic plan cannot drop the "$n > 0 OR ..." conditions.
PLANNER_SETTINGS = """
SET LOCAL work_mem = '256MB';
SET LOCAL jit = off;
SET LOCAL enable_mergejoin = off;
SET LOCAL plan_cache_mode = force_custom_plan
"""
# Back to the session's values (as_of: the statistics queries run after the build).
PLANNER_DEFAULTS = """
SET LOCAL work_mem TO DEFAULT;
SET LOCAL jit TO DEFAULT;
SET LOCAL enable_mergejoin TO DEFAULT;
SET LOCAL enable_nestloop TO DEFAULT;
SET LOCAL enable_sort TO DEFAULT;
SET LOCAL enable_bitmapscan TO DEFAULT
"""


class Lag(msgspec.Struct, frozen=True):
    """How far a projection is behind the log (also as it appears in answers)."""

    events: int
    seconds: float


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    """A projection's checkpoint and lag, as reported by the CLI and stats answers."""

    name: str
    checkpoint: Checkpoint
    events: int
    lag: Lag


async def apply_range(
    conn: Connection, projection: Projection, after: Checkpoint, upto: Checkpoint
) -> None:
    """Run the projection's statements over (after, upto] on ``conn``'s tables (inside
    the caller's transaction)."""
    # A range from the log's start (a rebuild, an as_of answer) reads events of most
    # types, and so every page of the events table: a sequential scan reads 1M events in
    # 0.28 s where a bitmap scan of the type index, which the planner picks, took 0.40 s
    # (a full model_stats pass, alternating: 5.56 -> 5.23 s of backend CPU).
    whole = ";SET LOCAL enable_bitmapscan = off" if after == START else ""
    await conn.execute(PLANNER_SETTINGS + ";" + projection.planner + whole)
    bounds = (
        str(after.transaction_id),
        after.global_position,
        str(upto.transaction_id),
        upto.global_position,
    )
    for statement in projection.statements:
        await conn.execute(statement, *bounds, *statement_args(statement))


async def next_batch(
    conn: Connection, after: Checkpoint, limit: int
) -> tuple[int, Checkpoint] | None:
    """How many events the next batch holds and where it ends; None when caught up."""
    row = await conn.fetchrow(
        NEXT_BATCH_SQL, str(after.transaction_id), after.global_position, limit
    )
    if row is None:
        return None
    return int(row["n"]), Checkpoint(row["xid"], row["pos"])


async def count_range(conn: Connection, after: Checkpoint, upto: Checkpoint) -> int:
    """How many events lie in (after, upto]."""
    count: int = await conn.fetchval(
        COUNT_RANGE_SQL,
        str(after.transaction_id),
        after.global_position,
        str(upto.transaction_id),
        upto.global_position,
    )
    return count


async def _apply_upto(
    conn: Connection,
    projection: Projection,
    after: Checkpoint,
    target: Checkpoint,
    limit: int,
    advanced: Callable[[int], None],
    waiting: int | None = None,
) -> Checkpoint:
    """Apply (after, target] in ranges of at most ``limit`` events; returns where it
    got to (``target``, or ``after`` if that was beyond it).

    ``target`` must be a gap-safe head read before: every event up to it exists and
    is counted once here (``waiting``, when the caller counted already). The last range
    ends at ``target`` without listing positions; those before it are next_batch's,
    whose limit-th event lies before ``target`` while more than ``limit`` wait. Each
    range is a transaction of its own (a savepoint, inside the caller's transaction).
    """
    if waiting is None:
        waiting = await count_range(conn, after, target)
    while waiting > 0:
        if waiting <= limit:
            count, upto = waiting, target
        else:
            batch = await next_batch(conn, after, limit)
            assert batch is not None, "events counted before the head disappeared"
            count, upto = batch
        async with conn.transaction():
            await apply_range(conn, projection, after, upto)
        after, waiting = upto, waiting - count
        advanced(count)
    return max(after, target)


async def head(conn: Connection) -> Checkpoint:
    """The gap-safe head of the log (START when empty)."""
    row = await conn.fetchrow(HEAD_SQL)
    return Checkpoint() if row is None else Checkpoint(row["xid"], row["pos"])


async def lag_after(conn: Connection, checkpoint: Checkpoint) -> Lag:
    """Events after the checkpoint (counted up to a cap) and the age of the oldest."""
    row = await conn.fetchrow(
        LAG_SQL, str(checkpoint.transaction_id), checkpoint.global_position, LAG_COUNT_CAP
    )
    assert row is not None
    return Lag(int(row["events"]), float(row["seconds"]))


async def read_checkpoint(conn: Connection, name: str) -> tuple[Checkpoint, int]:
    """A projection's checkpoint and event count (START, 0 before its first step)."""
    row = await conn.fetchrow(
        "SELECT transaction_id, global_position, events FROM projection_checkpoints "
        "WHERE name = $1",
        name,
    )
    if row is None:
        return Checkpoint(), 0
    return Checkpoint(row["transaction_id"], row["global_position"]), int(row["events"])


async def status(conn: Connection, names: Sequence[str] | None = None) -> list[ProjectionStatus]:
    """Checkpoint and lag of each projection."""
    out = []
    for projection in PROJECTIONS:
        if names and projection.name not in names:
            continue
        checkpoint, events = await read_checkpoint(conn, projection.name)
        out.append(
            ProjectionStatus(projection.name, checkpoint, events, await lag_after(conn, checkpoint))
        )
    return out


async def lock_checkpoint(conn: Connection, name: str) -> asyncpg.Record:
    """The projection's checkpoint row, locked for this transaction (created the
    first time: one round trip in the usual case)."""
    row = await conn.fetchrow(READ_CHECKPOINT_SQL, name)
    if row is None:
        await conn.execute(CREATE_CHECKPOINT_SQL, name)
        row = await conn.fetchrow(READ_CHECKPOINT_SQL, name)
    assert row is not None
    return row


async def step(
    conn: Connection,
    projection: Projection,
    limit: int = BATCH_EVENTS,
    *,
    before_commit: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Apply the next batch of the log to the live read models; the events applied.

    ``before_commit`` runs after the read models and checkpoint are written and before
    the commit (tests use it to kill the session there)."""
    async with conn.transaction():
        row = await lock_checkpoint(conn, projection.name)
        after = Checkpoint(row["transaction_id"], row["global_position"])
        batch = await next_batch(conn, after, limit)
        if batch is None:
            return 0
        count, upto = batch
        await apply_range(conn, projection, after, upto)
        await conn.execute(
            WRITE_CHECKPOINT_SQL, projection.name, upto.transaction_id, upto.global_position, count
        )
        if before_commit is not None:
            await before_commit()
    return count


class ProjectionWorker:
    """Keeps the read models up to date; run one or more per deployment.

    Holds one connection for its life: the advisory locks it owns are tied to it and
    its LISTEN wakes it. ``owned`` names the projections this worker currently runs.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        poll_interval: float = 1.0,
        settle_s: float = 0.25,
        batch_events: int = BATCH_EVENTS,
        projections: Sequence[Projection] = PROJECTIONS,
    ) -> None:
        self.pool = pool
        self.poll_interval = poll_interval
        # After a wake-up, wait this long so one step takes every append that came
        # meanwhile: under load the worker steps ~4 times a second, not per append.
        # Each step's statements cost ~7 ms of Postgres time whatever their size
        # (planning alone is 2.3 ms), so stepping at 9/s took a third of Postgres's
        # time at 100 fusions/s; the statistics lag a quarter second more.
        self.settle_s = settle_s
        self.batch_events = batch_events
        self.projections = tuple(projections)
        self.owned: set[str] = set()
        self.server_pid: int | None = None  # the backend of its connection, while it has one
        self.applied = 0
        self.caught_up = asyncio.Event()

    async def run(self) -> None:
        """Run until cancelled; a database error costs a pause, not the worker."""
        await keep_running(
            self.pool,
            self._run_connected,
            pause_s=self.poll_interval,
            failure="projection.worker_failed",
        )

    async def _run_connected(self) -> None:
        wake = asyncio.Event()

        def on_notify(*_: Any) -> None:
            wake.set()

        async with stateful(self.pool) as conn:  # LISTEN, advisory locks
            self.server_pid = conn.get_server_pid()
            await conn.add_listener(NOTIFY_CHANNEL, on_notify)
            try:
                while True:
                    wake.clear()
                    busy = await self.round(conn)
                    if busy:
                        continue
                    self.caught_up.set()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), self.poll_interval)
                    self.caught_up.clear()
                    await asyncio.sleep(self.settle_s)
            finally:
                with contextlib.suppress(Exception):
                    await conn.remove_listener(NOTIFY_CHANNEL, on_notify)
                with contextlib.suppress(Exception):
                    for name in self.owned:
                        await asyncio.shield(conn.fetchval(UNLOCK_SQL, name))
                self.owned.clear()

    async def round(self, conn: Connection) -> bool:
        """Claim what is free, apply one batch to each owned projection; True if any
        batch was full (more is waiting)."""
        busy = False
        for projection in self.projections:
            if projection.name not in self.owned:
                if not await conn.fetchval(LOCK_SQL, projection.name):
                    continue  # another worker owns it
                self.owned.add(projection.name)
                log.info("projection.owned", projection=projection.name)
            applied = await step(conn, projection, self.batch_events)
            self.applied += applied
            busy = busy or applied == self.batch_events
        return busy


async def run_until_caught_up(
    pool: asyncpg.Pool,
    batch_events: int = BATCH_EVENTS,
    patience_s: float = 30.0,
    *,
    owned_elsewhere: list[str] | None = None,
) -> int:
    """Apply every event committed so far to every projection (tests, `worker --once`).

    Takes the projections' locks like a worker: waits while another worker holds one,
    or, given ``owned_elsewhere``, leaves that projection to it (a live worker holds
    its lock for as long as it runs) and adds its name there. Waits, up to
    ``patience_s``, for transactions still open to finish, so that every projection
    it applied ends at the same checkpoint: the head of the log.
    """
    total = 0
    deadline = time.monotonic() + patience_s
    skipped: set[str] = set()
    async with stateful(pool) as conn:  # advisory locks
        while True:
            for projection in PROJECTIONS:
                if projection.name in skipped:
                    continue
                while not await conn.fetchval(LOCK_SQL, projection.name):
                    if owned_elsewhere is not None:
                        skipped.add(projection.name)
                        owned_elsewhere.append(projection.name)
                        break
                    await asyncio.sleep(0.05)  # a worker owns it: wait for its turn
                else:
                    try:
                        while applied := await step(conn, projection, batch_events):
                            total += applied
                    finally:
                        await conn.fetchval(UNLOCK_SQL, projection.name)
            behind = [s for s in await status(conn) if s.lag.events and s.name not in skipped]
            if not behind or time.monotonic() > deadline:
                return total
            await asyncio.sleep(0.02)  # an older transaction is still open


# --- rebuild ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """What a rebuild did."""

    name: str
    events: int
    seconds: float
    checkpoint: Checkpoint


async def _search_path(conn: Connection) -> tuple[str, str]:
    row = await conn.fetchrow(
        "SELECT current_schema() AS live, current_setting('search_path') AS path"
    )
    assert row is not None
    return str(row["live"]), str(row["path"])


def _shadow_schema(live: str, name: str) -> str:
    """The scratch schema of one projection's rebuild: unique per (schema, projection)
    within Postgres's 63-byte names, so concurrent rebuilds never share one."""
    full = f"{live}__rebuild_{name}"
    if len(full.encode()) <= 63:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:12]
    return f"rebuild_{digest}_{name}"[:63]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def rebuild(
    pool: asyncpg.Pool,
    name: str,
    *,
    batch_events: int = REBUILD_BATCH_EVENTS,
    progress: Callable[[int, int], None] | None = None,
) -> RebuildResult:
    """Rebuild one projection from position zero into shadow tables, then swap them in.

    ``progress(done, total)`` is called after each batch (total is the log's size
    when the rebuild started).
    """
    projection = BY_NAME[name]
    started = time.perf_counter()
    async with stateful(pool) as conn:  # SET search_path
        live, path = await _search_path(conn)
        shadow = _shadow_schema(live, name)
        await conn.execute(f"DROP SCHEMA IF EXISTS {_ident(shadow)} CASCADE")
        await conn.execute(f"CREATE SCHEMA {_ident(shadow)}")
        try:
            deferred = []  # the live tables' other indexes, built once the rows are in
            for table in projection.tables:
                await conn.execute(
                    f"CREATE TABLE {_ident(shadow)}.{_ident(table)} "
                    f"(LIKE {_ident(live)}.{_ident(table)} INCLUDING ALL)"
                )
                for index in await conn.fetch(
                    SECONDARY_INDEXES_SQL, f"{_ident(shadow)}.{_ident(table)}", None
                ):
                    await conn.execute(f"DROP INDEX {index['name']}")
                deferred += [
                    index["definition"]
                    for index in await conn.fetch(
                        SECONDARY_INDEXES_SQL, f"{_ident(live)}.{_ident(table)}", shadow
                    )
                ]
            shadow_path = f"{_ident(shadow)}, {path}"
            start_head = await head(conn)  # the log as the rebuild found it
            total = await count_range(conn, START, start_head)
            checkpoint, done = START, 0

            def advanced(count: int) -> None:
                nonlocal done
                done += count
                if progress:
                    progress(done, max(total, done))

            async with _shadowed(conn, shadow_path):
                checkpoint = await _apply_upto(
                    conn, projection, checkpoint, start_head, batch_events, advanced, total
                )
                for definition in deferred:
                    await conn.execute(definition)
                for table in projection.tables:  # statistics for the planner, from the start
                    await conn.execute(f"ANALYZE {_ident(shadow)}.{_ident(table)}")
                # What came meanwhile (index builds included), still without blocking
                # the live runner: little is left for the locked stretch.
                for _ in range(REBUILD_CHASE_PASSES):
                    target = await head(conn)
                    if target <= checkpoint:
                        break
                    checkpoint = await _apply_upto(
                        conn, projection, checkpoint, target, batch_events, advanced
                    )
            async with conn.transaction():
                # Under the checkpoint row's lock the live runner cannot step: apply
                # what came meanwhile, then swap the tables and the checkpoint.
                await lock_checkpoint(conn, name)
                await conn.execute(f"SET LOCAL search_path = {shadow_path}")
                checkpoint = await _apply_upto(
                    conn, projection, checkpoint, await head(conn), batch_events, advanced
                )
                await conn.execute(f"SET LOCAL search_path = {path}")
                for table in projection.tables:
                    await conn.execute(f"DROP TABLE {_ident(live)}.{_ident(table)}")
                    await conn.execute(
                        f"ALTER TABLE {_ident(shadow)}.{_ident(table)} SET SCHEMA {_ident(live)}"
                    )
                await conn.execute(
                    "UPDATE projection_checkpoints SET transaction_id = $2, global_position = $3,"
                    " events = $4, updated_at = now() WHERE name = $1",
                    name,
                    checkpoint.transaction_id,
                    checkpoint.global_position,
                    done,
                )
                await conn.execute(
                    GRANT_SQL.format(tables=", ".join(map(_ident, projection.tables)))
                )
        finally:
            await conn.execute(f"DROP SCHEMA IF EXISTS {_ident(shadow)} CASCADE")
    seconds = time.perf_counter() - started
    log.info("projection.rebuilt", projection=name, events=done, seconds=round(seconds, 3))
    return RebuildResult(name, done, seconds, checkpoint)


# A table's non-unique indexes (unique ones arbitrate the statements' ON CONFLICT, so
# they stay): names, and definitions with the table moved to schema $2 (same index
# names: they live in that schema, and after the swap they are the live names again).
# Inserting 140,000 rows into the runs table with its two secondary indexes took 2.2 s,
# without them 0.3 s, and building each afterwards 0.3 s.
SECONDARY_INDEXES_SQL = """
SELECT i.indexrelid::regclass::text AS name,
       regexp_replace(pg_get_indexdef(i.indexrelid), ' ON \\S+ ',
                      ' ON ' || format('%I.%I', coalesce($2, n.nspname), c.relname) || ' ')
           AS definition
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.indrelid = $1::regclass AND NOT i.indisunique
"""

GRANT_SQL = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fusion_ledger_app') THEN
        GRANT SELECT, INSERT, UPDATE ON {tables} TO fusion_ledger_app;
    END IF;
END $$
"""


@contextlib.asynccontextmanager
async def _shadowed(conn: Connection, search_path: str) -> AsyncIterator[None]:
    """Resolve read-model names to the shadow tables on this connection for a while.

    A changed search_path also makes Postgres re-plan cached statements, so prepared
    statements cannot keep pointing at the live tables.
    """
    old = await conn.fetchval("SELECT current_setting('search_path')")
    await conn.execute(f"SET search_path = {search_path}")
    try:
        yield
    finally:
        await conn.execute(f"SET search_path = {old}")


# --- as of ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def as_of(
    conn: Connection, upto: Checkpoint, names: Sequence[str] | None = None
) -> AsyncIterator[None]:
    """Inside: the read-model names (of the projections ``names``, default all) resolve
    to temporary tables built from the log up to ``upto``. Everything is rolled back on
    exit; the live tables are not touched."""
    projections = [p for p in PROJECTIONS if names is None or p.name in names]
    transaction = conn.transaction()
    await transaction.start()
    try:
        for projection in projections:
            for table in projection.tables:
                await conn.execute(
                    f"CREATE TEMP TABLE {_ident(table)} (LIKE {_ident(table)} INCLUDING ALL)"
                )
        path = await conn.fetchval("SELECT current_setting('search_path')")
        await conn.execute(f"SET LOCAL search_path = pg_temp, {path}")
        for projection in projections:
            await apply_range(conn, projection, Checkpoint(), upto)
        await conn.execute(PLANNER_DEFAULTS)
        yield
    finally:
        await transaction.rollback()
