"""The batch worker's exactly-once promise where it is hardest: a second worker
writing some of the same replays concurrently (the bulk append refuses them, the
rest still gets written), and a worker process killed midway (SIGKILL: no clean-up
runs) whose batch another process completes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import asyncpg

from service.domain.events import Event, JudgeSpec, ReplayFilter
from service.domain.runs import RunState
from service.orchestration.batch import BatchReplayer
from service.orchestration.replay import Replayer, batch_replay_id, stamp
from service.store import NO_STREAM, EventStore
from service.store.verify import verify_chains
from tests.conftest import TestDatabase
from tests.integration.replay_batch_child import JUDGE
from tests.integration.replay_fixtures import (
    RUN_EVENTS_SQL,
    ScriptedJudge,
    offline_config,
    record_runs,
)

ROOT = Path(__file__).resolve().parents[2]
REPLAYS_OF_BATCH_SQL = """
SELECT e.data->>'source_run_id' AS source_run_id, e.stream_id
FROM events e
WHERE e.event_type = 'replay.requested' AND e.data->>'batch_id' = $1
"""


class RacingReplayer(Replayer):
    """Records the replay of one run as another worker would, while this worker is
    still judging it: the race the advisory lock usually prevents."""

    def __init__(self, store: EventStore, victim: str) -> None:
        super().__init__(store, ScriptedJudge(allow=0), offline_config())  # the vote calls none
        self.victim = victim
        self.raced_event_ids: list[uuid.UUID] = []

    async def rejudge(
        self,
        replay_id: uuid.UUID,
        run_id: uuid.UUID | str,
        source: RunState,
        spec: JudgeSpec,
        *,
        tenant: str,
        batch_id: str | None = None,
        force: bool = False,
    ) -> list[Event]:
        events = await super().rejudge(
            replay_id, run_id, source, spec, tenant=tenant, batch_id=batch_id
        )
        if str(run_id) == self.victim:
            theirs = stamp(events, replay_id, "default", "other-worker", None)
            await self.store.append_to_stream(f"replay-{replay_id}", theirs, NO_STREAM)
            self.raced_event_ids = [e.event_id for e in theirs]
        return events


async def test_a_racing_worker_leaves_each_run_replayed_once(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    run_ids = await record_runs(store, 100)  # two of the vote's bulk chunks
    before = [tuple(r) for r in await pool.fetch(RUN_EVENTS_SQL)]
    racing = RacingReplayer(store, victim=run_ids[70])
    batches = BatchReplayer(store, racing)
    accepted = await batches.submit(
        ReplayFilter(), JudgeSpec(kind="vote"), concurrency=2, tenant="default", actor="test"
    )
    await batches.wait(accepted.batch_id)

    progress = await batches.progress(accepted.batch_id, "default")
    assert progress.completed is not None
    assert progress.done == progress.completed.replayed == progress.completed.finalized == 100
    replays = await pool.fetch(REPLAYS_OF_BATCH_SQL, str(accepted.batch_id))
    assert sorted(r["source_run_id"] for r in replays) == sorted(run_ids)  # each exactly once
    raced = await store.read_stream(f"replay-{batch_replay_id(accepted.batch_id, run_ids[70])}")
    assert [r.event_id for r in raced] == racing.raced_event_ids  # the first writer's, whole
    assert [tuple(r) for r in await pool.fetch(RUN_EVENTS_SQL)] == before  # sources untouched
    async with pool.acquire() as conn:
        report = await verify_chains(conn)
    assert report.ok, report.problems
    assert report.streams == 100 + 100 + 1  # runs, replays, the batch


async def test_a_killed_worker_process_leaves_a_batch_another_process_completes(
    database: TestDatabase, store: EventStore, pool: asyncpg.Pool
) -> None:
    run_ids = await record_runs(store, 12)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.replay_batch_child",
        database.url,
        "5",  # five judge answers, then the judge hangs in both workers
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = b""
        while not line.startswith(b"batch_id="):  # log lines come first
            line = await asyncio.wait_for(child.stdout.readline(), 60)
            assert line, "the child exited without starting a batch"
        batch_id = uuid.UUID(line.decode().removeprefix("batch_id=").strip())
        deadline = time.monotonic() + 60
        while len(await pool.fetch(REPLAYS_OF_BATCH_SQL, str(batch_id))) < 5:
            assert time.monotonic() < deadline, "the child never replayed five runs"
            await asyncio.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    assert len(await pool.fetch(REPLAYS_OF_BATCH_SQL, str(batch_id))) == 5
    assert (
        await pool.fetchval("SELECT version FROM streams WHERE stream_id = $1", f"batch-{batch_id}")
        == 1
    )  # not completed

    judge = ScriptedJudge()
    batches = BatchReplayer(store, Replayer(store, judge, offline_config()))
    deadline = time.monotonic() + 60
    while (await batches.progress(batch_id, "default", report=False)).completed is None:
        # Until the server notices the dead client, its advisory lock on the batch holds.
        assert time.monotonic() < deadline, "the batch never completed after the kill"
        await batches.resume_unfinished()
        await batches.wait(batch_id)
        await asyncio.sleep(0.05)

    assert judge.calls == 12 - 5  # only runs without a replay were judged
    assert set(judge.models) == {JUDGE.model}  # no panel model was called
    replays = await pool.fetch(REPLAYS_OF_BATCH_SQL, str(batch_id))
    assert sorted(r["source_run_id"] for r in replays) == sorted(run_ids)  # each exactly once
    progress = await batches.progress(batch_id, "default")
    assert progress.completed is not None and progress.completed.finalized == 12
    async with pool.acquire() as conn:
        assert (await verify_chains(conn)).ok
