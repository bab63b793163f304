"""Comparing two judges on the same recorded runs (pure): agreement, accuracy against
ground truth with Wilson 95% intervals, overall and by category, cost and latency.

A replay that ended in run.failed gave no answer: it counts as disagreeing with the
original and as wrong on ground truth, so a judge cannot look better by failing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec

from service.domain.scoring import answers_match

Z_95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class JudgedRun:
    """One source run and its replay, as far as a comparison needs them."""

    category: str
    original_answer: str
    replay_answer: str | None  # None: the replay ended in run.failed
    expected: str | None  # ground truth, when an outcome recorded one
    original_judge_cost_usd: float
    original_judge_latency_ms: float
    replay_judge_cost_usd: float
    replay_judge_latency_ms: float
    replay_fell_back: bool
    normalizer: int = 1  # the source run's answer normaliser (scoring), for every match


class Proportion(msgspec.Struct, frozen=True, kw_only=True):
    successes: int
    n: int
    rate: float | None
    ci_low: float | None
    ci_high: float | None


class AccuracyRow(msgspec.Struct, frozen=True, kw_only=True):
    category: str  # "all" for the overall row
    n: int
    original: Proportion
    replay: Proportion
    difference: float | None  # replay rate minus original rate


class Spend(msgspec.Struct, frozen=True, kw_only=True):
    total_usd: float
    mean_usd: float | None


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None


class JudgeCosts(msgspec.Struct, frozen=True, kw_only=True):
    cost: Spend
    latency: Latency


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    replayed: int
    finalized: int
    failed: int
    fallbacks: int
    agreement: Proportion
    ground_truth: AccuracyRow
    by_category: list[AccuracyRow]
    original_judge: JudgeCosts
    replay_judge: JudgeCosts


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (n > 0)."""
    if n <= 0:
        raise ValueError("the Wilson interval needs at least one trial")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(successes: int, n: int) -> Proportion:
    """A proportion with its Wilson 95% interval (all None when n is 0)."""
    if n == 0:
        return Proportion(successes=0, n=0, rate=None, ci_low=None, ci_high=None)
    low, high = wilson_interval(successes, n)
    return Proportion(successes=successes, n=n, rate=successes / n, ci_low=low, ci_high=high)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in (0, 100]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def compare_judges(runs: Iterable[JudgedRun]) -> Comparison:
    """How the replayed judge did against the original on the same runs."""
    done = list(runs)
    agreed = sum(
        r.replay_answer is not None
        and answers_match(r.replay_answer, r.original_answer, r.normalizer)
        for r in done
    )
    truth = [r for r in done if r.expected is not None]
    categories = sorted({r.category for r in truth})
    finalized = sum(r.replay_answer is not None for r in done)
    return Comparison(
        replayed=len(done),
        finalized=finalized,
        failed=len(done) - finalized,
        fallbacks=sum(r.replay_fell_back for r in done),
        agreement=proportion(agreed, len(done)),
        ground_truth=_accuracy("all", truth),
        by_category=[_accuracy(c, [r for r in truth if r.category == c]) for c in categories],
        original_judge=_costs(
            [r.original_judge_cost_usd for r in done], [r.original_judge_latency_ms for r in done]
        ),
        replay_judge=_costs(
            [r.replay_judge_cost_usd for r in done], [r.replay_judge_latency_ms for r in done]
        ),
    )


def is_correct(answer: str | None, expected: str, normalizer: int) -> bool:
    """An answer scored against ground truth; no answer is wrong."""
    return answer is not None and answers_match(answer, expected, normalizer)


def _accuracy(category: str, runs: Sequence[JudgedRun]) -> AccuracyRow:
    graded = [(r, r.expected) for r in runs if r.expected is not None]
    original = proportion(
        sum(is_correct(r.original_answer, truth, r.normalizer) for r, truth in graded), len(runs)
    )
    replay = proportion(
        sum(is_correct(r.replay_answer, truth, r.normalizer) for r, truth in graded), len(runs)
    )
    difference = None
    if original.rate is not None and replay.rate is not None:
        difference = replay.rate - original.rate
    return AccuracyRow(
        category=category, n=len(runs), original=original, replay=replay, difference=difference
    )


def _costs(costs: Sequence[float], latencies: Sequence[float]) -> JudgeCosts:
    n = len(costs)
    total = math.fsum(costs)
    return JudgeCosts(
        cost=Spend(total_usd=total, mean_usd=total / n if n else None),
        latency=Latency(
            mean_ms=math.fsum(latencies) / n if n else None,
            p50_ms=percentile(latencies, 50),
            p95_ms=percentile(latencies, 95),
        ),
    )
