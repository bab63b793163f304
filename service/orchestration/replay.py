"""Re-judging a recorded run: its recorded panel successes go to a new judge, and the
result is a ``replay-…`` stream; the source run is only read, never written.

A replay stream is written in one append (replay.requested, the judge's event, then
answer.finalized or run.failed), so it is never found half-written: a crash before
the append leaves nothing, and the stream's id is deterministic, so the log's
``no_stream`` check makes a second replay of the same thing a no-op. The id comes
from (source run, canonical judge spec) for a single replay, plus a random nonce when
the client forces a new one, and from (batch, source run) inside a batch.

The judge is ``run_judge``, the very function a live run uses, with the live run's
seed (the same ballot order), so only the judge differs between original and replay.
A weighted or informed judge sees the member weights the original judge recorded; when
it recorded none, the router's track records now, as a live run's judge would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from service.config import Config, UnknownPreset
from service.domain.events import (
    AnswerFinalized,
    Event,
    JudgeSpec,
    PanelRequest,
    ReplayRequested,
    RunFailed,
)
from service.domain.judging import Candidate, question_text
from service.domain.runs import RunState, fold
from service.domain.scoring import NORMALIZERS, UnknownNormalizer, normalize_answer
from service.orchestration.caller import ModelCaller
from service.orchestration.judge import run_judge
from service.orchestration.plan import stable_seed
from service.orchestration.planning import InvalidRequest, _check_judge
from service.orchestration.router import Router
from service.store import NO_STREAM, EventStore, NewEvent, WrongExpectedVersion

log = structlog.get_logger("replay")

REPLAY_NAMESPACE = uuid.UUID("0b7c3f52-5d1e-4f0a-a0a4-6f5e2b9c8d17")
JUDGE_KINDS = ("synthesize", "select", "vote")
DEFAULT_JUDGE_TIMEOUT_S = 120.0


class RunNotFound(LookupError):
    """No run with this id (for this tenant)."""


class RunNotReplayable(Exception):
    """The run never reached answer.finalized, so there is no decision to compare."""


class ReplayInterrupted(Exception):
    """This process stopped (``close``) while the replay's judge was deciding: nothing
    of the replay was recorded (or, cut as its one append landed, all of it), so the
    same request again, on any replica, is safe."""


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """A replay's stream folded, the source it read, and whether it existed before."""

    replay_id: uuid.UUID
    state: RunState
    source: RunState
    existing: bool


def canonical_judge(spec: JudgeSpec) -> str:
    """The judge spec as text, keeping only what changes the judgement."""
    fields: dict[str, Any] = {"kind": spec.kind}
    if spec.kind == "vote":
        fields["weighted"] = spec.weighted
    else:
        fields |= {"model": spec.model, "informed": spec.informed, "fallback": spec.fallback}
    return msgspec.json.encode(fields, order="sorted").decode()


def replay_id_for(run_id: uuid.UUID, spec: JudgeSpec, nonce: str | None = None) -> uuid.UUID:
    """The id of the replay of this run with this judge (a new one per force nonce)."""
    name = "\x1f".join(["replay", str(run_id), canonical_judge(spec), nonce or ""])
    return uuid.uuid5(REPLAY_NAMESPACE, name)


def batch_replay_id(batch_id: uuid.UUID | str, run_id: uuid.UUID | str) -> uuid.UUID:
    """The id of a batch's replay of one run: replaying it twice is impossible."""
    return uuid.uuid5(REPLAY_NAMESPACE, f"batch\x1f{batch_id}\x1f{run_id}")


def check_judge(config: Config, spec: JudgeSpec, source: RunState | None = None) -> None:
    """Validate a replay's judge like a live run's (raises InvalidRequest, 422)."""
    if spec.kind not in JUDGE_KINDS:
        raise InvalidRequest("judge.kind", f"must be one of {', '.join(JUDGE_KINDS)}")
    panel: list[PanelRequest] = []
    preset_allows = False
    if source is not None:
        panel = [PanelRequest(model=m.model) for m in source.members.values()]
        preset = source.request.preset if source.request else None
        try:
            preset_allows = preset is not None and config.preset(preset).allow_panel_judge
        except UnknownPreset:
            preset_allows = False
    _check_judge(config, spec, panel, preset_allows)


def source_of(records: Sequence[Any], tenant: str) -> RunState:
    """The folded source run; RunNotFound / RunNotReplayable when it cannot be replayed."""
    if not records or records[0].metadata_dict().get("tenant") != tenant:
        raise RunNotFound("no such run")
    state = fold(r.decode() for r in records)
    if state.request is None:
        raise RunNotFound("no such run")
    if state.finalized is None:
        raise RunNotReplayable(f"the run is {state.status}: it never reached answer.finalized")
    check_normalizer(state)
    return state


def check_normalizer(source: RunState) -> None:
    """UnknownNormalizer when a newer release recorded the run: its replay would vote
    and normalise by a rule this code lacks (checked before any judge is paid)."""
    if source.request is not None and source.request.normalizer not in NORMALIZERS:
        raise UnknownNormalizer(source.request.normalizer)


def stamp(
    events: Sequence[Event], replay_id: uuid.UUID, tenant: str, actor: str, cause: str | None
) -> list[NewEvent]:
    """Metadata for a replay's events: each event is caused by the one before it."""
    stamped: list[NewEvent] = []
    correlation_id = str(replay_id)
    for event in events:
        meta = {
            "correlation_id": correlation_id,
            "causation_id": cause,
            "tenant": tenant,
            "actor": actor,
        }
        new = NewEvent(event, meta)
        stamped.append(new)
        cause = str(new.event_id)
    return stamped


class Replayer:
    """Re-judges recorded runs; owns the tasks of replays in flight. The router, when
    given, supplies track records to weighted and informed judges."""

    def __init__(
        self,
        store: EventStore,
        caller: ModelCaller,
        config: Config,
        *,
        router: Router | None = None,
    ) -> None:
        self.store = store
        self.caller = caller
        self.config = config
        self.router = router
        self._inflight: dict[uuid.UUID, asyncio.Task[ReplayOutcome]] = {}

    async def replay(
        self, run_id: uuid.UUID, spec: JudgeSpec, *, tenant: str, actor: str, force: bool = False
    ) -> ReplayOutcome:
        """Replay one run now (or return the replay of this run and judge that exists)."""
        records = await self.store.read_stream(f"run-{run_id}")
        source = source_of(records, tenant)
        check_judge(self.config, spec, source)
        replay_id = replay_id_for(run_id, spec, uuid.uuid4().hex if force else None)
        existing = await self.store.read_stream(f"replay-{replay_id}")
        if existing:
            return ReplayOutcome(replay_id, fold(r.decode() for r in existing), source, True)
        task = self._inflight.get(replay_id)
        if task is None:
            task = asyncio.create_task(
                self._replay(replay_id, run_id, source, spec, tenant, actor, force)
            )
            self._inflight[replay_id] = task
            task.add_done_callback(lambda _: self._inflight.pop(replay_id, None))
        # shield: a client that goes away does not cancel a judge that is already paid for
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not _stopped_under_request(task):
                raise
            # Not this request's cancellation, which the server would answer with a
            # bare 500: the process is stopping (a rolling restart), say "retry".
            raise ReplayInterrupted("the service stopped before the replay was recorded") from None

    @property
    def in_flight(self) -> int:
        """Replays this process is judging for requests now."""
        return len(self._inflight)

    async def _replay(
        self,
        replay_id: uuid.UUID,
        run_id: uuid.UUID,
        source: RunState,
        spec: JudgeSpec,
        tenant: str,
        actor: str,
        force: bool,
    ) -> ReplayOutcome:
        events = await self.rejudge(replay_id, run_id, source, spec, tenant=tenant, force=force)
        stream_id = f"replay-{replay_id}"
        try:
            await self.store.append_to_stream(
                stream_id, stamp(events, replay_id, tenant, actor, None), NO_STREAM
            )
        except WrongExpectedVersion:  # another replica recorded the same replay first
            records = await self.store.read_stream(stream_id)
            return ReplayOutcome(replay_id, fold(r.decode() for r in records), source, True)
        state = fold(events)
        log.info(
            "replay.summary",
            replay_id=str(replay_id),
            source_run_id=str(run_id),
            judge=spec.kind,
            judge_model=spec.model,
            status=state.status,
            decided_by=state.finalized.decided_by if state.finalized else None,
        )
        return ReplayOutcome(replay_id, state, source, False)

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
        """The replay's events: the new judge over the source's recorded successes only
        (``tenant``: the source run's, whose profiles a weighted judge may read)."""
        assert source.request is not None
        started = time.perf_counter()
        candidates = [Candidate(m.member_id, m.text or "") for m in source.succeeded]
        requested = ReplayRequested(
            replay_id=str(replay_id),
            source_run_id=str(run_id),
            source_stream_version=source.version,
            judge=spec,
            batch_id=batch_id,
            force=force,
        )
        result = await run_judge(
            self.caller,
            spec,
            question_text(source.request.messages),
            candidates,
            seed=stable_seed(str(run_id), "judge"),
            timeout_s=source.request.timeout_s or DEFAULT_JUDGE_TIMEOUT_S,
            weights=self._judge_weights(spec, source, tenant),
            self_judging=spec.model is not None
            and spec.model in {m.model for m in source.members.values()},
            normalizer=source.request.normalizer,  # the source run's rule, never a newer one
        )
        latency = (time.perf_counter() - started) * 1000
        if result.decision is None:
            failed = RunFailed(
                reason="judge_failed",
                message="the judge failed and the fallback is 'fail'",
                latency_ms=latency,
                cost_usd=result.cost_usd,
            )
            return [requested, result.event, failed]
        answer = result.decision.final_answer
        finalized = AnswerFinalized(
            answer=answer,
            answer_sha256=hashlib.sha256(answer.encode()).hexdigest(),
            answer_normalized=normalize_answer(answer, source.request.normalizer),
            decided_by=result.decided_by,
            latency_ms=latency,
            cost_usd=result.cost_usd,  # a replay pays for its judge only
            panel_cost_usd=0.0,
            judge_cost_usd=result.cost_usd,
        )
        return [requested, result.event, finalized]

    def _judge_weights(
        self, spec: JudgeSpec, source: RunState, tenant: str
    ) -> dict[str, float] | None:
        """The weights the original judge saw, so a weighted vote replays
        bit-identically; when it saw none, a weighted or informed judge gets the
        router's on the tenant's profiles, as a live run would (with no router, none)."""
        recorded = source.judge.member_weights if source.judge is not None else None
        if recorded is not None or self.router is None or not (spec.weighted or spec.informed):
            return recorded
        assert source.request is not None
        members = [(m.member_id, m.model) for m in source.succeeded]
        return self.router.member_weights(source.request.category, members, tenant=tenant)

    async def close(self) -> None:
        """Cancel replays in flight; nothing of theirs was written (one append each).
        A request waiting for one gets ReplayInterrupted."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):  # cancelled: nothing to record
                await task


def _stopped_under_request(task: asyncio.Task[ReplayOutcome]) -> bool:
    """The replay's task was cancelled (``close``), and the request awaiting it was not."""
    current = asyncio.current_task()
    return task.cancelled() and current is not None and current.cancelling() == 0
