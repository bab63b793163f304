"""Batch replays: a filter's runs re-judged in the background, with bounded
concurrency, resumable after a crash, each run replayed exactly once.

A batch is a ``batch-<uuid>`` stream: ``replay.batch.requested`` holds the filter,
the judge and the resolved list of source runs (with the stream version each replay
reads up to); ``replay.batch.completed`` closes it. Progress is not stored anywhere:
it is the set of replay streams that exist, and their ids are a function of
(batch, run), so a restarted worker (batch_worker.py) replays exactly the runs that
lack one, and a duplicate worker loses on the log's ``no_stream`` check.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

import structlog

from service.config import Config
from service.domain.events import (
    JudgeSpec,
    ReplayBatchCompleted,
    ReplayBatchRequested,
    ReplayFilter,
    SourceRun,
)
from service.domain.judge_comparison import Comparison, compare_judges
from service.domain.scoring import NORMALIZERS
from service.orchestration.batch_worker import BatchWorker
from service.orchestration.caller import ModelCaller
from service.orchestration.planning import InvalidRequest
from service.orchestration.replay import (
    REPLAY_NAMESPACE,
    Replayer,
    batch_replay_id,
    check_judge,
)
from service.orchestration.replay_sources import (
    batch_state,
    judged_runs,
    resolve_runs,
    unfinished_batches,
)
from service.orchestration.router import Router
from service.store import NO_STREAM, EventStore, NewEvent, WrongExpectedVersion
from service.store.database import keep_running

log = structlog.get_logger("replay.batch")

MAX_BATCH_RUNS = 50_000
MAX_CONCURRENCY = 64


class BatchNotFound(LookupError):
    """No batch with this id (for this tenant)."""


@dataclass(frozen=True, slots=True)
class BatchSubmitted:
    """A batch accepted (or the one its Idempotency-Key made before)."""

    batch_id: uuid.UUID
    runs: int
    existing: bool


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Where a batch stands and, once complete, how the judges compare."""

    batch_id: uuid.UUID
    request: ReplayBatchRequested
    done: int
    completed: ReplayBatchCompleted | None
    comparison: Comparison | None
    # Runs not replayed yet that a newer release recorded (an answer normaliser version
    # this one lacks): the batch waits for a replica that knows it.
    waiting_for_upgrade: int = 0

    @property
    def status(self) -> str:
        """running | completed."""
        return "running" if self.completed is None else "completed"


class BatchReplayer:
    """Accepts batches, drives them in background tasks, and reports on them."""

    def __init__(self, store: EventStore, replayer: Replayer) -> None:
        self.store = store
        self.replayer = replayer
        self.worker = BatchWorker(store, replayer)
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}

    async def submit(
        self,
        selection: ReplayFilter,
        spec: JudgeSpec,
        *,
        concurrency: int,
        tenant: str,
        actor: str,
        idempotency_key: str | None = None,
    ) -> BatchSubmitted:
        """Resolve the filter, record the batch and start it; raises InvalidRequest."""
        check_judge(self.replayer.config, spec)
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise InvalidRequest("concurrency", f"must be 1..{MAX_CONCURRENCY}")
        runs = await resolve_runs(self.store, tenant, selection, MAX_BATCH_RUNS + 1)
        if not runs:
            raise InvalidRequest("filter", "no finalized runs match the filter")
        if len(runs) > MAX_BATCH_RUNS:
            raise InvalidRequest("filter", f"matches more than {MAX_BATCH_RUNS} runs; narrow it")
        on_panel = sum(spec.model in r.panel for r in runs) if spec.model else 0
        if spec.kind != "vote" and on_panel and not spec.allow_panel_model:
            raise InvalidRequest(
                "judge.model",
                f"{spec.model} sat on the panel of {on_panel} of these runs; a generator does "
                "not grade its own answers unless allow_panel_model is set",
            )
        batch_id = uuid.uuid4()
        if idempotency_key is not None:
            batch_id = uuid.uuid5(REPLAY_NAMESPACE, f"batch-key\x1f{tenant}\x1f{idempotency_key}")
        requested = ReplayBatchRequested(
            batch_id=str(batch_id),
            filter=selection,
            judge=spec,
            concurrency=concurrency,
            runs=[SourceRun(run_id=r.run_id, stream_version=r.stream_version) for r in runs],
            idempotency_key=idempotency_key,
        )
        meta = {"correlation_id": str(batch_id), "causation_id": None}
        try:
            await self.store.append_to_stream(
                f"batch-{batch_id}",
                [NewEvent(requested, meta | {"tenant": tenant, "actor": actor})],
                NO_STREAM,
            )
        except WrongExpectedVersion:
            return await self._existing(batch_id, requested, tenant)
        log.info("batch.requested", batch_id=str(batch_id), runs=len(runs), judge=spec.kind)
        self.start(batch_id)
        return BatchSubmitted(batch_id, len(runs), existing=False)

    async def _existing(
        self, batch_id: uuid.UUID, mine: ReplayBatchRequested, tenant: str
    ) -> BatchSubmitted:
        records = await self.store.read_stream(f"batch-{batch_id}")
        theirs = records[0].decode()
        assert isinstance(theirs, ReplayBatchRequested)
        if (theirs.filter, theirs.judge) != (mine.filter, mine.judge) or records[
            0
        ].metadata_dict().get("tenant") != tenant:
            raise InvalidRequest("Idempotency-Key", "already used for a different batch")
        self.start(batch_id)
        return BatchSubmitted(batch_id, len(theirs.runs), existing=True)

    def start(self, batch_id: uuid.UUID) -> None:
        """Drive the batch in a background task, unless this process already does."""
        if batch_id in self._tasks:
            return
        task = asyncio.create_task(self.worker.drive(batch_id), name=f"replay-batch-{batch_id}")
        self._tasks[batch_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(batch_id, None))

    async def resume_unfinished(self) -> int:
        """Start every batch that has no replay.batch.completed; returns how many."""
        started = 0
        for stream_id in await unfinished_batches(self.store):
            batch_id = uuid.UUID(stream_id.removeprefix("batch-"))
            if batch_id not in self._tasks:
                self.start(batch_id)
                started += 1
        return started

    async def resume_forever(self, interval_s: float = 30.0) -> None:
        """Resume at start, then pick up batches a dead replica left, until cancelled
        or the pool closes."""

        async def resume() -> None:
            if resumed := await self.resume_unfinished():
                log.info("batch.resumed", batches=resumed)

        await keep_running(
            self.store.pool, resume, pause_s=interval_s, failure="batch.resume_failed"
        )

    async def wait(self, batch_id: uuid.UUID) -> None:
        """Until this process's task for the batch ends (tests and the CLI's local use)."""
        task = self._tasks.get(batch_id)
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        """Stop every batch task; what they wrote is whole, the rest resumes later."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def progress(
        self, batch_id: uuid.UUID, tenant: str, *, report: bool = True
    ) -> BatchProgress:
        """Replays done so far; the judge comparison once the batch completed."""
        records = await self.store.read_stream(f"batch-{batch_id}")
        if not records or records[0].metadata_dict().get("tenant") != tenant:
            raise BatchNotFound(f"no batch {batch_id}")
        requested = records[0].decode()
        assert isinstance(requested, ReplayBatchRequested)
        completed = records[-1].decode() if len(records) > 1 else None
        assert completed is None or isinstance(completed, ReplayBatchCompleted)
        ids = [batch_replay_id(batch_id, r.run_id) for r in requested.runs]
        pairs = [(r.run_id, i) for r, i in zip(requested.runs, ids, strict=True)]
        done, waiting = await batch_state(self.store, pairs, NORMALIZERS)
        comparison = None
        if completed is not None and report:
            judged = await judged_runs(self.store, [(run, str(i)) for run, i in pairs])
            comparison = compare_judges(judged)
        return BatchProgress(batch_id, requested, done, completed, comparison, waiting)


@dataclass(frozen=True, slots=True)
class Replays:
    """Single and batch replays, as the application's lifespan owns them."""

    replayer: Replayer
    batches: BatchReplayer

    async def close(self) -> None:
        """Stop batch workers and replays in flight (each resumes or is retried later)."""
        await self.batches.close()
        await self.replayer.close()


def create_replays(
    store: EventStore, caller: ModelCaller, config: Config, router: Router | None = None
) -> Replays:
    """The replay services for one process (the router: judges' track records)."""
    replayer = Replayer(store, caller, config, router=router)
    return Replays(replayer, BatchReplayer(store, replayer))
