"""Running a judge over recorded candidates: LLM judges through the provider layer,
the vote in process, and the configured fallback when a judge fails.

Shared by live runs and replays, so a replayed judge behaves exactly like a live one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.domain.events import (
    GenerationParams,
    JudgeDecided,
    JudgeFailed,
    JudgeIdentity,
    JudgeSpec,
)
from service.domain.judging import (
    PROMPT_VERSION,
    Candidate,
    Decision,
    JudgeOutputError,
    build_ballot,
    judge_messages,
    parse_judge_output,
    vote,
)
from service.domain.scoring import CURRENT_NORMALIZER
from service.metrics import Metrics
from service.orchestration.caller import ModelCaller
from service.providers.outcomes import CallFailed
from service.tracing import model_call_span, record_call

FALLBACKS = ("vote", "first_success", "fail")
JUDGE_PARAMS = GenerationParams(temperature=0.0)


@dataclass(frozen=True, slots=True)
class JudgeResult:
    """The judge's event and, unless the fallback is 'fail', the decision taken."""

    event: JudgeDecided | JudgeFailed
    decision: Decision | None
    decided_by: str
    cost_usd: float


def identity(spec: JudgeSpec) -> JudgeIdentity:
    """Who judged: kind, model and prompt version, recorded on every verdict."""
    return JudgeIdentity(
        kind=spec.kind,
        model=spec.model if spec.kind != "vote" else None,
        prompt_version=PROMPT_VERSION if spec.kind != "vote" else "vote-v1",
        weighted=spec.weighted,
        informed=spec.informed,
    )


async def run_judge(
    caller: ModelCaller,
    spec: JudgeSpec,
    question: str,
    candidates: Sequence[Candidate],
    *,
    seed: int,
    timeout_s: float,
    weights: Mapping[str, float] | None = None,
    self_judging: bool = False,
    metrics: Metrics | None = None,
    normalizer: int = CURRENT_NORMALIZER,
) -> JudgeResult:
    """Judge the candidates; on judge failure take the spec's fallback and say so.
    With ``metrics``, the judge's model call counts in the provider metrics, as a
    member's does (replays may pass none). ``normalizer`` is the run's answer
    normaliser version (run.requested's), which a vote, also as a fallback, counts with."""
    who = identity(spec)
    if spec.kind == "vote":
        decision = vote(candidates, weights if spec.weighted else None, normalizer=normalizer)
        event = JudgeDecided(
            judge=who,
            final_answer=decision.final_answer,
            verdicts=decision.verdicts,
            rationale=decision.rationale,
            member_weights=dict(weights) if spec.weighted and weights else None,
        )
        return JudgeResult(event, decision, "judge", 0.0)
    assert spec.model is not None
    ballot = build_ballot(spec.kind, question, candidates, seed, weights if spec.informed else None)
    started = time.perf_counter()
    if timeout_s <= 0:
        return _fallback(
            spec, who, candidates, normalizer, "timeout", "no time left for the judge", "", 0.0, 0.0
        )
    with model_call_span(caller.provider_of(spec.model), spec.model, "judge") as span:
        outcome = await caller.complete(
            spec.model, judge_messages(ballot), JUDGE_PARAMS, timeout_s=timeout_s, seed=seed
        )
        record_call(span, outcome)
    if metrics is not None:
        metrics.record_provider_call(spec.model, outcome)
    latency = (time.perf_counter() - started) * 1000
    if isinstance(outcome, CallFailed):
        return _fallback(
            spec, who, candidates, normalizer, outcome.error_kind, outcome.message, "", 0.0, latency
        )
    try:
        decision = parse_judge_output(outcome.text, ballot)
    except JudgeOutputError as exc:
        return _fallback(
            spec,
            who,
            candidates,
            normalizer,
            "malformed_output",
            str(exc),
            outcome.text,
            outcome.cost_usd,
            latency,
        )
    event = JudgeDecided(
        judge=who,
        final_answer=decision.final_answer,
        verdicts=decision.verdicts,
        rationale=decision.rationale,
        input_tokens=outcome.input_tokens,
        output_tokens=outcome.output_tokens,
        cost_usd=outcome.cost_usd,
        latency_ms=latency,
        raw_output=outcome.text,
        member_weights=dict(weights) if spec.informed and weights else None,
        self_judging=self_judging,
    )
    return JudgeResult(event, decision, "judge", outcome.cost_usd)


def _fallback(
    spec: JudgeSpec,
    who: JudgeIdentity,
    candidates: Sequence[Candidate],
    normalizer: int,
    error_kind: str,
    message: str,
    raw: str,
    cost: float,
    latency: float,
) -> JudgeResult:
    decision: Decision | None
    if spec.fallback == "vote":
        decision = vote(candidates, normalizer=normalizer)
    elif spec.fallback == "first_success":
        first = candidates[0]
        decision = vote([first], normalizer=normalizer)
        decision = Decision(first.text, decision.verdicts, "first successful member")
    else:
        decision = None
    event = JudgeFailed(
        judge=who,
        error_kind=error_kind,
        message=message[:500],
        fallback=spec.fallback,
        raw_output=raw,
        cost_usd=cost,
        latency_ms=latency,
    )
    return JudgeResult(event, decision, f"fallback:{spec.fallback}", cost)
