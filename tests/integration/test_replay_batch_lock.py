"""Batch replays with two replicas on one database: the lock that makes one of them
the batch's driver, and what happens when the driver loses it mid-batch."""

from __future__ import annotations

import asyncio

import asyncpg

from service.domain.events import JudgeSpec, Message
from service.orchestration.batch import BatchReplayer
from service.orchestration.replay import Replayer
from service.providers.outcomes import CallSucceeded
from service.store import EventStore
from service.store.database import create_pool
from tests.conftest import TestDatabase
from tests.integration.replay_fixtures import ScriptedJudge, offline_config, record_runs
from tests.integration.test_replay_batches_robust import record_batch

SELECT = JudgeSpec(kind="select", model="sim/judge-strong")

# The backend holding a batch's lock (batch_worker.TRY_LOCK_SQL's key, as pg_locks
# shows a bigint key: high half in classid, low half in objid).
LOCK_HOLDER_SQL = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 1
  AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 42)
"""


class FirstCallHeld(ScriptedJudge):
    """Holds its first call until released (a slow judge); the others answer at once."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def complete(
        self, model_id: str, messages: list[Message], *args: object, **kwargs: object
    ) -> CallSucceeded:
        if not self.entered.is_set():
            self.entered.set()
            await self.release.wait()
        return await super().complete(model_id, messages, *args, **kwargs)


async def test_a_driver_whose_lock_session_ended_stops_before_judging_more_runs(
    database: TestDatabase,
) -> None:
    # Replica A drives a batch; its lock's session ends under it (an administrator,
    # idle_session_timeout: the lock connection sits idle for the whole batch). Replica
    # B then takes the lock and drives the batch. A used to go on judging every run it
    # had listed, so most runs were judged, and paid, twice; the log kept one replay
    # each only because the second writer lost on no_stream.
    pool_a = await create_pool(database.url, min_size=1, max_size=10)
    pool_b = await create_pool(database.url, min_size=1, max_size=10)
    admin = await asyncpg.connect(database.url)
    store_a, store_b = EventStore(pool_a), EventStore(pool_b)
    judge_a, judge_b = FirstCallHeld(), ScriptedJudge()
    replica_a = BatchReplayer(store_a, Replayer(store_a, judge_a, offline_config()))
    replica_b = BatchReplayer(store_b, Replayer(store_b, judge_b, offline_config()))
    try:
        await record_runs(store_a, 6)
        batch_id = await record_batch(store_a, SELECT, concurrency=1)
        replica_a.start(batch_id)
        await asyncio.wait_for(judge_a.entered.wait(), 20)  # A holds the lock, judging
        holder = await admin.fetchval(LOCK_HOLDER_SQL, f"batch-{batch_id}")
        assert holder is not None
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", holder)
        for _ in range(500):  # the backend exits, and its lock goes, a moment later
            if await admin.fetchval(LOCK_HOLDER_SQL, f"batch-{batch_id}") is None:
                break
            await asyncio.sleep(0.01)

        assert await replica_b.resume_unfinished() == 1  # the lock is free: B drives
        await asyncio.wait_for(replica_b.wait(batch_id), 60)
        assert judge_b.calls == 6  # A's run in flight was not written yet
        judge_a.release.set()
        await asyncio.wait_for(replica_a.wait(batch_id), 60)

        assert judge_a.calls == 1  # only the call already in flight; none after it
        progress = await replica_b.progress(batch_id, "default", report=False)
        assert progress.completed is not None and progress.completed.finalized == 6
        streams = await admin.fetchval("SELECT count(*) FROM streams WHERE category = 'replay'")
        assert streams == 6
    finally:
        await replica_a.close()
        await replica_b.close()
        await admin.close()
        await pool_a.close()
        await pool_b.close()


async def test_a_second_replica_leaves_a_batch_alone_while_its_driver_holds_it(
    database: TestDatabase,
) -> None:
    # The usual case: B restarts while A drives; B's resume finds the batch held and
    # returns at once, and every run is judged once, by A.
    pool_a = await create_pool(database.url, min_size=1, max_size=10)
    pool_b = await create_pool(database.url, min_size=1, max_size=10)
    store_a, store_b = EventStore(pool_a), EventStore(pool_b)
    judge_a, judge_b = FirstCallHeld(), ScriptedJudge()
    replica_a = BatchReplayer(store_a, Replayer(store_a, judge_a, offline_config()))
    replica_b = BatchReplayer(store_b, Replayer(store_b, judge_b, offline_config()))
    try:
        await record_runs(store_a, 4)
        batch_id = await record_batch(store_a, SELECT, concurrency=2)
        replica_a.start(batch_id)
        await asyncio.wait_for(judge_a.entered.wait(), 20)
        assert await replica_b.resume_unfinished() == 1
        await asyncio.wait_for(replica_b.wait(batch_id), 20)  # returned: A holds it
        judge_a.release.set()
        await asyncio.wait_for(replica_a.wait(batch_id), 60)
        assert (judge_a.calls, judge_b.calls) == (4, 0)
        progress = await replica_a.progress(batch_id, "default", report=False)
        assert progress.completed is not None and progress.completed.finalized == 4
    finally:
        await replica_a.close()
        await replica_b.close()
        await pool_a.close()
        await pool_b.close()
