"""POST /v1/runs/{run_id}/outcomes: record ground truth or labels on a closed run.

201 with the recorded outcome; 200 with the earlier one when the same
``Idempotency-Key`` was used before on this run (a retry, or an evaluation resuming);
every refusal is a problem response and writes nothing.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody

from service.api.deps import IdempotencyKey, Services, provide_services
from service.api.errors import Problem, problems
from service.domain.events import OutcomeRecorded, OutcomeSource
from service.domain.grading import (
    OutcomeRejected,
    RunStillOpen,
    grade_against,
    record_labels,
    run_normalizer,
)
from service.domain.runs import TERMINAL_TYPES, RunState, fold
from service.domain.scoring import UnknownNormalizer, normalize_answer
from service.store import EventIdConflict, NewEvent, RecordedEvent, UnstorableEvent
from service.store.errors import WrongExpectedVersion

OUTCOME_NAMESPACE = uuid.UUID("3d0a6c1e-7b4f-4e52-9c1d-52a8e0f4b6a9")
_ATTEMPTS = 6  # another outcome landing between our read and our append: read again
Answer = Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]
MemberId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class OutcomeBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # final_correct is UNSET when absent, so "absent" and an explicit null differ: null
    # is the only label a failed run's (missing) final answer can take.
    expected: Answer | None = None
    final_correct: bool | msgspec.UnsetType | None = msgspec.UNSET
    members: dict[MemberId, bool] | None = None
    source: OutcomeSource = "human"
    label: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class MemberOutcomeView(msgspec.Struct, frozen=True, kw_only=True):
    member_id: str
    model: str
    correct: bool | None


class OutcomeView(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    event_id: str
    source: str
    label: str | None
    recorded_by: str
    expected: str | None
    expected_normalized: str | None
    final_correct: bool | None
    members: list[MemberOutcomeView]
    position: int
    version: int
    existing: bool


def decide(state: RunState, body: OutcomeBody, actor: str) -> OutcomeRecorded:
    """The event this body asks for; OutcomeRejected or a 422 Problem when it cannot be."""
    labelled = body.final_correct is not msgspec.UNSET
    if (body.expected is not None) == labelled:  # neither, or both
        raise Problem(
            422,
            "Invalid outcome",
            "give either expected (the right answer) or final_correct (with members)",
            field="expected",
        )
    if body.expected is not None and body.members is not None:
        raise Problem(
            422,
            "Invalid outcome",
            "members are graded from expected; send per-member labels with final_correct",
            field="members",
        )
    if body.expected is not None:
        # Blank by the run's own rule: it would mark every answer wrong.
        if not normalize_answer(body.expected, run_normalizer(state)):
            raise Problem(
                422, "Invalid outcome", "expected is blank once normalised", field="expected"
            )
        return grade_against(
            state, body.expected, source=body.source, recorded_by=actor, label=body.label
        )
    final = body.final_correct if isinstance(body.final_correct, bool) else None
    return record_labels(
        state, final, body.members or {}, source=body.source, recorded_by=actor, label=body.label
    )


def _run_stream(run_id: str) -> tuple[uuid.UUID, str]:
    try:
        parsed = uuid.UUID(run_id)
    except ValueError:
        raise Problem(404, "Run not found", f"{run_id!r} is not a run id") from None
    return parsed, f"run-{parsed}"


def _view(
    run_id: uuid.UUID, state: RunState, event: OutcomeRecorded, record: RecordedEvent, new: bool
) -> OutcomeView:
    return OutcomeView(
        run_id=str(run_id),
        event_id=str(record.event_id),
        source=event.source,
        label=event.label,
        recorded_by=event.recorded_by,
        expected=event.expected,
        expected_normalized=event.expected_normalized,
        final_correct=event.final_correct,
        members=[
            MemberOutcomeView(
                member_id=m.member_id, model=state.members[m.member_id].model, correct=m.correct
            )
            for m in event.members
        ],
        position=record.global_position,
        version=record.stream_version,
        existing=not new,
    )


async def _not_a_replay(services: Services, tenant: str, run_id: uuid.UUID) -> None:
    """A replay's id is no run's: say where its ground truth goes (its source run)."""
    replay = await services.store.read_stream(f"replay-{run_id}", 0, 1)
    if replay and replay[0].metadata_dict().get("tenant") == tenant:
        source = getattr(replay[0].decode(), "source_run_id", "?")
        raise Problem(
            422,
            "Not a run",
            f"{run_id} is a replay; record ground truth on its source run {source}, "
            "whose replays are all graded by it",
        )


async def _record(
    services: Services, tenant: str, actor: str, run_id: uuid.UUID, stream_id: str,
    body: OutcomeBody, event_id: uuid.UUID,
) -> tuple[RunState, OutcomeRecorded, RecordedEvent, bool]:  # fmt: skip
    """Read the run, decide, append at the version read; (state, event, record, new)."""
    for attempt in range(_ATTEMPTS):
        if attempt:  # others' outcomes landed between our read and append: let them pass
            await asyncio.sleep(random.uniform(0.005, 0.02) * 2**attempt)
        records = await services.store.read_stream(stream_id)
        if not records or records[0].metadata_dict().get("tenant") != tenant:
            await _not_a_replay(services, tenant, run_id)
            raise Problem(404, "Run not found", f"no run {run_id}")
        state = fold(r.decode() for r in records)
        event = decide(state, body, actor)
        earlier = next((r for r in records if r.event_id == event_id), None)
        if earlier is not None:
            return state, _same_or_conflict(earlier, event), earlier, False
        terminal = next(r for r in reversed(records) if r.event_type in TERMINAL_TYPES)
        metadata = {
            "correlation_id": str(run_id),
            "causation_id": str(terminal.event_id),  # the answer (or failure) graded
            "tenant": tenant,
            "actor": actor,
        }
        try:
            result = await services.store.append_to_stream(
                stream_id, [NewEvent(event, metadata, event_id)], records[-1].stream_version
            )
        except WrongExpectedVersion:
            continue
        except UnstorableEvent as exc:
            raise Problem(422, "Invalid outcome", str(exc)) from exc
        except EventIdConflict as exc:
            raise Problem(422, "Idempotency-Key reused", str(exc)) from exc
        if result.duplicate:
            continue  # our own retry landed meanwhile: read it back
        written = await services.store.read_stream(
            stream_id, result.stream_version - 1, result.stream_version
        )
        return state, event, written[0], True
    raise Problem(
        409,
        "Run busy",
        "other outcomes kept landing on this run; try again",
        headers={"retry-after": "1"},
    )


def _same_or_conflict(earlier: RecordedEvent, wanted: OutcomeRecorded) -> OutcomeRecorded:
    stored = earlier.decode()
    assert isinstance(stored, OutcomeRecorded)
    if msgspec.structs.replace(wanted, recorded_by=stored.recorded_by) != stored:
        raise Problem(
            422,
            "Idempotency-Key reused",
            "this Idempotency-Key already recorded a different outcome on this run",
        )
    return stored


@post(
    "/v1/runs/{run_id:str}/outcomes",
    dependencies={"services": Provide(provide_services, sync_to_thread=False)},
    status_code=201,
    summary="Record ground truth or labels for a run",
    responses={
        **problems(404, 409, 413, 422),
        200: ResponseSpec(OutcomeView, description="Recorded before (the same Idempotency-Key)"),
    },
)
async def record_outcome(
    request: Request[Any, Any, Any],
    data: JSONBody[OutcomeBody],
    services: NamedDependency[Services],
    run_id: FromPath[str],
    idempotency_key: IdempotencyKey = None,
) -> Response[OutcomeView]:
    """Append one outcome.recorded to the run, scoring the final answer and each member."""
    parsed, stream_id = _run_stream(run_id)
    tenant = getattr(request.state, "tenant", "default")
    actor = getattr(request.state, "actor", "anonymous")
    key = idempotency_key if idempotency_key is not None else str(uuid.uuid4())
    event_id = uuid.uuid5(OUTCOME_NAMESPACE, f"{tenant}\x1f{parsed}\x1f{key}")
    try:
        state, event, record, new = await _record(
            services, tenant, actor, parsed, stream_id, data, event_id
        )
    except RunStillOpen as exc:
        raise Problem(409, "Run still open", str(exc)) from exc
    except UnknownNormalizer as exc:  # a newer release recorded the run: it can grade it
        raise Problem(
            503, "Run needs a newer service", f"{exc}; retry on an upgraded replica"
        ) from exc
    except OutcomeRejected as exc:
        raise Problem(422, "Invalid outcome", str(exc), field=exc.field) from exc
    view = _view(parsed, state, event, record, new)
    return Response(view, status_code=201 if new else 200)
