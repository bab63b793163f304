"""Replays: re-judge one recorded run, or a filtered batch, and compare judges.

- POST /v1/runs/{run_id}/replays: 201 with the replay (200 when it existed already)
- POST /v1/replays: 202 with the batch id; the batch runs in the background
- GET /v1/replays/{batch_id}: progress, then the judge comparison
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, cast

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody

from service.api.deps import IdempotencyKey, Services, provide_services
from service.api.errors import Problem, problems
from service.api.fusions import client_identity
from service.api.views import JudgeView
from service.domain.events import JudgeKind, JudgeSpec, ReplayFilter
from service.domain.judge_comparison import Comparison
from service.domain.runs import RunState
from service.domain.scoring import answers_match
from service.orchestration.batch import BatchNotFound, BatchProgress, Replays
from service.orchestration.planning import InvalidRequest
from service.orchestration.replay import (
    JUDGE_KINDS,
    ReplayInterrupted,
    ReplayOutcome,
    RunNotFound,
    RunNotReplayable,
)
from service.projections.queries import aware_moment

_DEPS = {"services": Provide(provide_services, sync_to_thread=False)}
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class ReplayJudgeBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # kind and fallback are plain text so that a wrong one is a 422 naming the field
    kind: Text
    model: Text | None = None
    weighted: bool = False
    informed: bool = False
    fallback: Text = "vote"
    allow_panel_model: bool = False

    def spec(self) -> JudgeSpec:
        """As the event catalog records it; raises InvalidRequest for an unknown kind."""
        if self.kind not in JUDGE_KINDS:
            raise InvalidRequest("judge.kind", f"must be one of {', '.join(JUDGE_KINDS)}")
        return JudgeSpec(
            kind=cast(JudgeKind, self.kind),
            model=self.model,
            weighted=self.weighted,
            informed=self.informed,
            allow_panel_model=self.allow_panel_model,
            fallback=self.fallback,
        )


class ReplayBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    judge: ReplayJudgeBody
    force: bool = False


class FilterBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    since: datetime | None = None
    until: datetime | None = None
    category: Text | None = None
    preset: Text | None = None
    model: Text | None = None
    has_ground_truth: bool | None = None

    def selection(self) -> ReplayFilter:
        """As the batch event records it (times in ISO 8601, UTC when none was given)."""
        since = _moment("filter.since", self.since)
        until = _moment("filter.until", self.until)
        if since and until and since >= until:
            raise InvalidRequest("filter.until", "must be later than since")
        return ReplayFilter(
            since=since.isoformat() if since else None,
            until=until.isoformat() if until else None,
            category=self.category,
            preset=self.preset,
            model=self.model,
            has_ground_truth=self.has_ground_truth,
        )


def _moment(field: str, moment: datetime | None) -> datetime | None:
    aware = aware_moment(moment) if moment is not None else None
    if moment is not None and aware is None:
        raise InvalidRequest(field, "out of range")
    return aware


class BatchBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    filter: FilterBody = FilterBody()
    judge: ReplayJudgeBody
    concurrency: int = 8


class ReplayView(msgspec.Struct, frozen=True, kw_only=True):
    replay_id: str
    source_run_id: str
    source_stream_version: int
    batch_id: str | None
    existing: bool
    status: str
    answer: str | None
    original_answer: str | None
    agrees_with_original: bool | None
    judge: JudgeView | None
    cost_usd: float
    latency_ms: float | None
    failure_reason: str | None = None


class BatchAccepted(msgspec.Struct, frozen=True, kw_only=True):
    batch_id: str
    status: str
    runs: int
    existing: bool
    status_url: str


class FilterView(msgspec.Struct, frozen=True, kw_only=True):
    since: str | None
    until: str | None
    category: str | None
    preset: str | None
    model: str | None
    has_ground_truth: bool | None


class BatchJudgeView(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    model: str | None
    weighted: bool
    informed: bool
    fallback: str


class BatchView(msgspec.Struct, frozen=True, kw_only=True):
    batch_id: str
    status: str
    filter: FilterView
    judge: BatchJudgeView
    concurrency: int
    runs: int
    done: int
    progress: float
    # Runs left that a newer release recorded: only a replica that knows their answer
    # normaliser version can finish the batch (ops/runbook.md).
    waiting_for_upgrade: int
    replayed: int | None
    finalized: int | None
    failed: int | None
    report: Comparison | None


def _replays(services: Services) -> Replays:
    replays: Replays = services.extras["replays"]
    return replays


def _run_uuid(text: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise Problem(404, f"{what} not found", f"{text!r} is not a {what.lower()} id") from None


@post(
    "/v1/runs/{run_id:str}/replays",
    dependencies=_DEPS,
    summary="Re-judge one run",
    responses={
        **problems(404, 409, 413, 422),
        200: ResponseSpec(ReplayView, description="Replayed before by this judge (no force)"),
    },
)
async def replay_run(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    run_id: FromPath[str],
    data: JSONBody[ReplayBody],
) -> Response[ReplayView]:
    """Run only the new judge over the run's recorded successes; the run is untouched."""
    parsed = _run_uuid(run_id, "Run")
    who = client_identity(request)
    try:
        outcome = await _replays(services).replayer.replay(
            parsed, data.judge.spec(), tenant=who.tenant, actor=who.actor, force=data.force
        )
    except RunNotFound:
        raise Problem(404, "Run not found", f"no run {parsed}") from None
    except RunNotReplayable as exc:
        raise Problem(409, "Run not replayable", str(exc)) from exc
    except InvalidRequest as exc:
        raise Problem(exc.status, "Invalid replay request", str(exc), field=exc.field) from exc
    except ReplayInterrupted as exc:  # a stopping replica: another one can replay the run
        detail = f"{exc}; retry: the run is replayed again (or the replay recorded is returned)"
        raise Problem(503, "Shutting down", detail, headers={"retry-after": "1"}) from exc
    return Response(replay_view(outcome), status_code=200 if outcome.existing else 201)


def replay_view(outcome: ReplayOutcome) -> ReplayView:
    """What a client sees of a replay, beside the original decision."""
    state, source = outcome.state, outcome.source
    assert state.replay is not None
    original = source.finalized.answer if source.finalized else None
    answer = state.finalized.answer if state.finalized else None
    agrees = None
    if original is not None:
        normalizer = source.request.normalizer if source.request else 1
        agrees = answer is not None and answers_match(answer, original, normalizer)
    end = state.finalized or state.failed
    return ReplayView(
        replay_id=str(outcome.replay_id),
        source_run_id=state.replay.source_run_id,
        source_stream_version=state.replay.source_stream_version,
        batch_id=state.replay.batch_id,
        existing=outcome.existing,
        status=state.status,
        answer=answer,
        original_answer=original,
        agrees_with_original=agrees,
        judge=_judge_view(state),
        cost_usd=end.cost_usd if end else 0.0,
        latency_ms=end.latency_ms if end else None,
        failure_reason=state.failed.reason if state.failed else None,
    )


def _judge_view(state: RunState) -> JudgeView | None:
    decided, failed = state.judge, state.judge_failure
    who = decided.judge if decided else failed.judge if failed else None
    if who is None:
        return None
    return JudgeView(
        kind=who.kind,
        model=who.model,
        fallback=failed.fallback if failed else None,
        decided_by=state.finalized.decided_by if state.finalized else None,
        error=failed.message if failed else None,
    )


@post(
    "/v1/replays",
    dependencies=_DEPS,
    status_code=202,
    summary="Re-judge a batch of runs",
    responses=problems(413, 422),
)
async def create_batch(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    data: JSONBody[BatchBody],
    idempotency_key: IdempotencyKey = None,
) -> BatchAccepted:
    """Resolve the filter now, replay its runs in the background; poll the status URL."""
    who = client_identity(request)
    try:
        accepted = await _replays(services).batches.submit(
            data.filter.selection(),
            data.judge.spec(),
            concurrency=data.concurrency,
            tenant=who.tenant,
            actor=who.actor,
            idempotency_key=idempotency_key,
        )
    except InvalidRequest as exc:
        raise Problem(exc.status, "Invalid replay batch", str(exc), field=exc.field) from exc
    return BatchAccepted(
        batch_id=str(accepted.batch_id),
        status="accepted",
        runs=accepted.runs,
        existing=accepted.existing,
        status_url=f"/v1/replays/{accepted.batch_id}",
    )


@get(
    "/v1/replays/{batch_id:str}",
    dependencies=_DEPS,
    summary="A replay batch and its report",
    responses=problems(404),
)
async def get_batch(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    batch_id: FromPath[str],
) -> BatchView:
    """Progress while running; then how the new judge compares with the original."""
    parsed = _run_uuid(batch_id, "Batch")
    try:
        progress = await _replays(services).batches.progress(
            parsed, client_identity(request).tenant
        )
    except BatchNotFound:
        raise Problem(404, "Batch not found", f"no replay batch {parsed}") from None
    return batch_view(progress)


def batch_view(progress: BatchProgress) -> BatchView:
    """The batch as a client sees it."""
    request, completed = progress.request, progress.completed
    total = len(request.runs)
    return BatchView(
        batch_id=str(progress.batch_id),
        status=progress.status,
        filter=FilterView(**msgspec.structs.asdict(request.filter)),
        judge=BatchJudgeView(
            kind=request.judge.kind,
            model=request.judge.model,
            weighted=request.judge.weighted,
            informed=request.judge.informed,
            fallback=request.judge.fallback,
        ),
        concurrency=request.concurrency,
        runs=total,
        done=progress.done,
        progress=progress.done / total if total else 1.0,
        waiting_for_upgrade=progress.waiting_for_upgrade,
        replayed=completed.replayed if completed else None,
        finalized=completed.finalized if completed else None,
        failed=completed.failed if completed else None,
        report=progress.comparison,
    )
