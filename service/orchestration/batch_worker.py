"""The worker that drives one replay batch: the runs without a replay stream are read
in chunks, re-judged, and written, a chunk's streams in one bulk append; then the
batch is closed with replay.batch.completed.

Exactly once: a replay stream's id is a function of (batch, run), the bulk append
creates streams only where none exists, and a restarted worker starts from the set
of streams that exist. Across replicas, the holder of the batch's advisory lock
drives it; the others return at once. The lock lives as long as its session, which
can end under a running batch (see BatchLock): the driver checks it still holds the
lock before each chunk, so that two replicas do not both pay the judge for the rest.

The pool: a batch holds a connection for its lock from start to end and needs others
to read and write, so batches started without bound (every unfinished one, at start)
could hold every connection and wait on each other for ever. A process drives at most
BATCHES_AT_ONCE batches (the rest queue), and their reads and writes share a fixed
number of connections whatever the batches' concurrency (which bounds judge calls):
locks and queries together take at most half the pool. That needs a pool of four or
more beside the projection worker's and the router's long-held connections.

A run whose re-judging raises (a judge model no longer configured, a bug) is recorded
as a failed replay, so the batch still completes and its report counts it; database
errors and cancellation end the batch instead, and it resumes later.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Sequence

import asyncpg
import structlog

from service.domain.events import (
    Event,
    ReplayBatchCompleted,
    ReplayBatchRequested,
    ReplayRequested,
    RunFailed,
    SourceRun,
)
from service.domain.runs import fold
from service.domain.scoring import UnknownNormalizer
from service.orchestration.replay import Replayer, batch_replay_id, check_normalizer, stamp
from service.orchestration.replay_sources import existing_streams, read_sources, terminal_counts
from service.store import NO_STREAM, EventStore, NewEvent, WrongExpectedVersion
from service.store.bulk_append import append_new_streams
from service.store.database import DATABASE_ERRORS, Connection, stateful

log = structlog.get_logger("replay.batch")

# The vote needs no I/O: a worker reads and writes up to this many runs per round trip
# (fewer when that leaves some of the batch's workers idle). 256 against 64, batch
# replays of 10,000 runs, alternating: 2,390-2,540 runs/s against 2,230-2,370, the
# process's CPU 2.97-3.11 s against 3.26-3.44 s (ops/bench/README.md).
VOTE_CHUNK = 256
# Runs a batch holds in memory at once (decoded sources and new events, waiting for
# their append): chunk x concurrency stays within this. About 100 MB with three 4 KB
# answers per run; the old fixed chunk of 64 held 4,096 runs at concurrency 64.
MAX_RUNS_IN_FLIGHT = 2048
BATCHES_AT_ONCE = 2  # per process; the others queue (see the pool, above)
# Errors of a lost connection end the batch, which resumes later; any other error while
# judging (TimeoutError included, though it is an OSError like the database's
# connection errors) would come back on every resume, so it is recorded as the run's.
# A run a newer release recorded (UnknownNormalizer) is neither: it is left out, the
# rest of the batch is replayed, and the batch stays open for an upgraded replica.
RESUMABLE = (ConnectionError, asyncpg.PostgresError, asyncpg.InterfaceError)
TRY_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtextextended($1, 42))"
UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtextextended($1, 42))"
# Whether this session holds that lock (pg_locks shows a bigint key's high half in
# classid, its low half in objid).
HOLDS_LOCK_SQL = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND objsubid = 1
      AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 42))
"""


def pool_shares(pool_size: int) -> tuple[int, int]:
    """(batches driven at once, their queries at once): together half the pool, at
    least one of each."""
    share = max(2, pool_size // 2)
    driven = min(BATCHES_AT_ONCE, share - 1)
    return driven, share - driven


class BatchLock:
    """The batch's advisory lock, held by the session of ``conn``.

    That session sits idle while the batch's reads and writes go through other
    connections, and it can end under a running batch (an administrator, Postgres's
    idle_session_timeout, a proxy): its lock goes with it, another replica's resume
    takes it, and both replicas then judged every run left (the log kept one replay of
    each: the second writer loses on no_stream; the judge was paid twice). ``held`` is
    asked before each chunk, so at most the chunks in flight are judged twice, and a
    session queried that often does not sit idle.
    """

    def __init__(self, conn: Connection, stream_id: str) -> None:
        self._conn = conn
        self._stream_id = stream_id
        self._turn = asyncio.Lock()  # the batch's workers share the one connection
        self.lost = False

    async def held(self) -> bool:
        """Whether this session still holds the lock (once lost, it stays lost)."""
        async with self._turn:
            if not self.lost:
                try:
                    self.lost = not await self._conn.fetchval(HOLDS_LOCK_SQL, self._stream_id)
                except DATABASE_ERRORS:  # the session is gone, and its lock with it
                    self.lost = True
        return not self.lost


class BatchWorker:
    """Replays what a batch still lacks, with the batch's concurrency, within this
    process's share of the pool."""

    def __init__(self, store: EventStore, replayer: Replayer) -> None:
        self.store = store
        self.replayer = replayer
        driven, queries = pool_shares(store.pool.get_max_size())
        self._driving = asyncio.Semaphore(driven)
        self._queries = asyncio.Semaphore(queries)

    async def drive(self, batch_id: uuid.UUID) -> None:
        """Finish the batch, unless another replica holds it; errors are logged."""
        stream_id = f"batch-{batch_id}"
        try:
            async with self._driving, stateful(self.store.pool) as conn:  # the advisory lock
                if not await conn.fetchval(TRY_LOCK_SQL, stream_id):
                    return  # another replica drives it
                try:
                    await self._replay_batch(batch_id, stream_id, BatchLock(conn, stream_id))
                except asyncio.CancelledError:
                    log.info("batch.interrupted", batch_id=str(batch_id))
                    raise
                except Exception:
                    log.exception("batch.failed", batch_id=str(batch_id))
                finally:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.fetchval(UNLOCK_SQL, stream_id))
        except DATABASE_ERRORS as exc:
            # The lock's connection could not be had, or died (giving it back raises
            # then): the batch resumes later, here or on another replica.
            log.warning("batch.connection_lost", batch_id=str(batch_id), error=repr(exc))

    async def _replay_batch(self, batch_id: uuid.UUID, stream_id: str, lock: BatchLock) -> None:
        async with self._queries:  # every query of a batch: see the pool, above
            records = await self.store.read_stream(stream_id)
        if len(records) != 1:
            return  # completed already
        requested = records[0].decode()
        assert isinstance(requested, ReplayBatchRequested)
        meta = records[0].metadata_dict()
        tenant, actor, cause = meta["tenant"], meta["actor"], str(records[0].event_id)
        replay_ids = {r.run_id: batch_replay_id(batch_id, r.run_id) for r in requested.runs}
        ids = {run: f"replay-{replay}" for run, replay in replay_ids.items()}
        async with self._queries:
            done = await existing_streams(self.store, list(ids.values()))
        todo = [r for r in requested.runs if ids[r.run_id] not in done]
        size = chunk_size(requested.judge.kind, len(todo), requested.concurrency)
        chunks: asyncio.Queue[list[SourceRun]] = asyncio.Queue()
        for start in range(0, len(todo), size):
            chunks.put_nowait(todo[start : start + size])

        waiting: list[str] = []  # runs of a newer release: left for an upgraded replica

        async def worker() -> None:
            while not chunks.empty():
                chunk = chunks.get_nowait()
                if not await lock.held():  # before paying for more judge calls
                    return
                waiting.extend(
                    await self._replay_chunk(requested, chunk, replay_ids, tenant, actor, cause)
                )

        async with asyncio.TaskGroup() as group:
            for _ in range(min(requested.concurrency, chunks.qsize())):
                group.create_task(worker())
        if lock.lost:
            log.warning(
                "batch.lock_lost",
                batch_id=str(batch_id),
                why="the lock's session ended: another replica may drive the batch now",
            )
            return  # whoever holds the lock now finishes it (or a later resume does)
        if waiting:
            log.warning(
                "batch.waiting_for_upgrade",
                batch_id=str(batch_id),
                runs=sorted(waiting)[:20],
                count=len(waiting),
                why="a newer release recorded these runs (answer normaliser version)",
            )
            return  # not completed: a replica that knows their version finishes it
        async with self._queries:
            finalized, failed = await terminal_counts(self.store, list(ids.values()))
        completed = ReplayBatchCompleted(
            replayed=finalized + failed, finalized=finalized, failed=failed
        )
        closing = NewEvent(
            completed,
            {
                "correlation_id": str(batch_id),
                "causation_id": cause,
                "tenant": tenant,
                "actor": "replay-worker",
            },
        )
        async with self._queries:
            with contextlib.suppress(WrongExpectedVersion):
                await self.store.append_to_stream(stream_id, [closing], 1)
        log.info("batch.completed", batch_id=str(batch_id), replayed_now=len(todo), failed=failed)

    async def _replay_chunk(
        self,
        requested: ReplayBatchRequested,
        chunk: Sequence[SourceRun],
        replay_ids: dict[str, uuid.UUID],
        tenant: str,
        actor: str,
        cause: str,
    ) -> list[str]:
        """Replay the chunk; returns the runs left out (recorded by a newer release)."""
        async with self._queries:
            sources = await read_sources(self.store, chunk)
        writes: list[tuple[str, list[NewEvent]]] = []
        left: list[str] = []
        # In turn: a chunk of more than one run is a vote's, which waits on nothing.
        for run in chunk:
            replay_id = replay_ids[run.run_id]
            try:
                events = await self._rejudge(
                    requested, run, sources.get(run.run_id, []), replay_id, tenant
                )
            except UnknownNormalizer:
                left.append(run.run_id)
                continue
            writes.append((f"replay-{replay_id}", stamp(events, replay_id, tenant, actor, cause)))
        if writes:
            async with self._queries:
                await self._append_all(writes)
        return left

    async def _rejudge(
        self,
        requested: ReplayBatchRequested,
        run: SourceRun,
        events: list[Event],
        replay_id: uuid.UUID,
        tenant: str,
    ) -> list[Event]:
        source = fold(events)
        if source.request is None or source.finalized is None:
            # Resolved as finalized, so this cannot happen short of a damaged log; the
            # replay still records it, so the batch ends and says what went wrong.
            return failed_replay(
                requested, run, source.version, replay_id, "source run has no final answer"
            )
        try:
            check_normalizer(source)  # before the judge is paid
            return await self.replayer.rejudge(
                replay_id,
                run.run_id,
                source,
                requested.judge,
                tenant=tenant,
                batch_id=requested.batch_id,
            )
        except (*RESUMABLE, UnknownNormalizer):
            raise  # not the run's fault: the batch resumes later, or waits for an upgrade
        except Exception as exc:  # it would fail again on every resume: record it
            log.exception("replay.failed", batch_id=requested.batch_id, run_id=run.run_id)
            message = f"{type(exc).__name__}: {exc}"[:500]
            return failed_replay(requested, run, source.version, replay_id, message)

    async def _append_all(self, writes: Sequence[tuple[str, list[NewEvent]]]) -> None:
        """All the chunk's replay streams in one statement; one by one when any exists
        already (another worker on the same batch got there first)."""
        try:
            await append_new_streams(self.store, writes)
        except WrongExpectedVersion:
            for stream_id, events in writes:
                with contextlib.suppress(WrongExpectedVersion):
                    await self.store.append_to_stream(stream_id, events, NO_STREAM)


def chunk_size(judge_kind: str, runs: int, concurrency: int) -> int:
    """Runs per round trip: one for a judge that calls a model (each waits on its own
    call); for the vote up to VOTE_CHUNK, fewer when that would leave workers idle or
    hold more than MAX_RUNS_IN_FLIGHT runs at once."""
    if judge_kind != "vote":
        return 1
    workers = max(1, concurrency)
    return max(1, min(VOTE_CHUNK, MAX_RUNS_IN_FLIGHT // workers, math.ceil(runs / workers)))


def failed_replay(
    requested: ReplayBatchRequested,
    run: SourceRun,
    source_version: int,
    replay_id: uuid.UUID,
    message: str,
) -> list[Event]:
    """A replay that could not judge: its request and run.failed (internal_error)."""
    return [
        ReplayRequested(
            replay_id=str(replay_id),
            source_run_id=run.run_id,
            source_stream_version=source_version,
            judge=requested.judge,
            batch_id=requested.batch_id,
        ),
        RunFailed(reason="internal_error", message=message),
    ]
