"""What each evaluated line came to, as the API answered it, and the summary:
the final answer against each panel model, on the same lines."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from service.evaluation.dataset import EvalItem

FINAL = "final"


class MemberReply(msgspec.Struct, frozen=True, kw_only=True):
    member_id: str
    model: str
    status: str  # pending | succeeded | failed
    cost_usd: float
    latency_ms: float | None


class FusionReply(msgspec.Struct, frozen=True, kw_only=True):
    """The part of POST /v1/fusions' answer an evaluation uses."""

    run_id: str
    status: str  # finalized | failed | running
    answer: str | None
    members: list[MemberReply]
    cost_usd: float
    latency_ms: float | None
    failure_reason: str | None = None  # why a failed run failed (RunFailureReason)


class MemberGrade(msgspec.Struct, frozen=True, kw_only=True):
    member_id: str
    correct: bool | None


class OutcomeReply(msgspec.Struct, frozen=True, kw_only=True):
    """The part of POST /v1/runs/{id}/outcomes' answer an evaluation uses."""

    final_correct: bool | None
    members: list[MemberGrade]
    existing: bool


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One line: its run and its outcome."""

    item: EvalItem
    run: FusionReply
    outcome: OutcomeReply


class SummaryRow(msgspec.Struct, frozen=True, kw_only=True):
    """One system on the evaluated lines; a failed call or run counts as not correct."""

    system: str  # "final", or a model id
    n: int
    correct: int
    failed: int
    accuracy: float | None  # correct / n
    mean_cost_usd: float | None
    mean_latency_ms: float | None  # over the calls that have a latency


@dataclass
class _Tally:
    n: int = 0
    correct: int = 0
    failed: int = 0
    cost: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def add(self, correct: bool | None, failed: bool, cost: float, latency: float | None) -> None:
        self.n += 1
        self.correct += correct is True
        self.failed += failed
        self.cost += cost
        if latency is not None:
            self.latencies.append(latency)

    def row(self, system: str) -> SummaryRow:
        return SummaryRow(
            system=system,
            n=self.n,
            correct=self.correct,
            failed=self.failed,
            accuracy=self.correct / self.n if self.n else None,
            mean_cost_usd=self.cost / self.n if self.n else None,
            mean_latency_ms=sum(self.latencies) / len(self.latencies) if self.latencies else None,
        )


def summarize(results: Iterable[ItemResult]) -> list[SummaryRow]:
    """The final answer first, then every panel model by name (each seat one call)."""
    final = _Tally()
    models: dict[str, _Tally] = {}
    for result in results:
        run, grades = result.run, {g.member_id: g.correct for g in result.outcome.members}
        final.add(
            result.outcome.final_correct, run.status != "finalized", run.cost_usd, run.latency_ms
        )
        for m in run.members:
            models.setdefault(m.model, _Tally()).add(
                grades.get(m.member_id), m.status != "succeeded", m.cost_usd, m.latency_ms
            )
    return [final.row(FINAL)] + [models[name].row(name) for name in sorted(models)]
