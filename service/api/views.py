"""Response bodies built from a run's state (shared by fusions, runs and chat)."""

from __future__ import annotations

import msgspec

from service.domain.runs import RunState


class MemberView(msgspec.Struct, frozen=True, kw_only=True):
    member_id: str
    model: str
    status: str
    error_kind: str | None
    latency_ms: float | None
    cost_usd: float
    attempts: int
    answer: str | None


class JudgeView(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    model: str | None
    fallback: str | None
    decided_by: str | None
    error: str | None = None


class FusionResponse(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    status: str
    answer: str | None
    category: str | None
    members: list[MemberView]
    judge: JudgeView | None
    cost_usd: float
    latency_ms: float | None
    failure_reason: str | None = None
    failure_message: str | None = None


def fusion_view(run_id: str, state: RunState) -> FusionResponse:
    """What a client sees of a run."""
    members = [
        MemberView(
            member_id=m.member_id,
            model=m.model,
            status=m.status,
            error_kind=m.error_kind,
            latency_ms=m.latency_ms,
            cost_usd=m.cost_usd,
            attempts=m.attempts,
            answer=m.text,
        )
        for m in state.members.values()
    ]
    judge = None
    if state.judge is not None or state.judge_failure is not None:
        who = state.judge.judge if state.judge else state.judge_failure.judge  # type: ignore[union-attr]
        judge = JudgeView(
            kind=who.kind,
            model=who.model,
            fallback=state.judge_failure.fallback if state.judge_failure else None,
            decided_by=state.finalized.decided_by if state.finalized else None,
            error=state.judge_failure.message if state.judge_failure else None,
        )
    end = state.finalized or state.failed
    return FusionResponse(
        run_id=run_id,
        status=state.status,
        answer=state.finalized.answer if state.finalized else None,
        category=state.request.category if state.request else None,
        members=members,
        judge=judge,
        cost_usd=end.cost_usd if end else sum(m.cost_usd for m in state.members.values()),
        latency_ms=end.latency_ms if end else None,
        failure_reason=state.failed.reason if state.failed else None,
        failure_message=state.failed.message if state.failed else None,
    )
