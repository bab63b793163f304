"""Comparing judges (pure): Wilson intervals, failed replays, categories, percentiles."""

from __future__ import annotations

import dataclasses
import json

import pytest

from service.domain.judge_comparison import (
    JudgedRun,
    compare_judges,
    percentile,
    proportion,
    wilson_interval,
)


def run(
    original: str,
    replay: str | None,
    expected: str | None,
    category: str = "math",
    cost: float = 0.0,
) -> JudgedRun:
    return JudgedRun(
        category=category,
        original_answer=original,
        replay_answer=replay,
        expected=expected,
        original_judge_cost_usd=0.0,
        original_judge_latency_ms=0.0,
        replay_judge_cost_usd=cost,
        replay_judge_latency_ms=10.0,
        replay_fell_back=False,
    )


def test_wilson_matches_published_values() -> None:
    # 8 of 10: the textbook Wilson 95% interval is [0.490, 0.943]
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert wilson_interval(0, 5)[0] == 0.0
    assert wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    assert proportion(0, 0).rate is None


def test_a_failed_replay_is_wrong_and_disagrees() -> None:
    report = compare_judges(
        [
            run("Answer: 4", "4", "4", cost=0.5),
            run("Answer: 5", "4", "4", cost=0.25),
            run("4", None, "4"),  # the new judge failed with fallback 'fail'
            run("B", "C", None, category="mc"),  # no ground truth: agreement only
        ]
    )
    assert (report.replayed, report.finalized, report.failed) == (4, 3, 1)
    assert (report.agreement.successes, report.agreement.n) == (1, 4)
    truth = report.ground_truth
    assert (truth.n, truth.original.successes, truth.replay.successes) == (3, 2, 2)
    assert truth.difference == 0.0
    assert [row.category for row in report.by_category] == ["math"]
    assert report.replay_judge.cost.total_usd == 0.75
    assert report.replay_judge.latency.p95_ms == 10.0


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([], 50) is None


def test_answers_are_compared_with_the_source_runs_normaliser() -> None:
    # Version 1 reads ".5" as "5" (a known gap it keeps); version 2 does not.
    runs_v1 = [dataclasses.replace(run(".5", "5", "5"), normalizer=1)]
    runs_v2 = [dataclasses.replace(run(".5", "5", "5"), normalizer=2)]
    v1, v2 = compare_judges(runs_v1), compare_judges(runs_v2)
    assert (v1.agreement.successes, v1.ground_truth.original.successes) == (1, 1)
    assert (v2.agreement.successes, v2.ground_truth.original.successes) == (0, 0)
    assert v2.ground_truth.replay.successes == 1


@pytest.mark.parametrize(("fallback", "fell_back"), [("vote", True), ("fail", False)])
def test_a_judge_failure_is_a_fallback_only_when_one_answered(
    fallback: str, fell_back: bool
) -> None:
    # A batch with fallback "fail" reported every failed replay as a fallback too.
    from service.orchestration.replay_sources import _absorb, _Facts

    facts = _Facts()
    _absorb(facts, "judge.failed", json.dumps({"fallback": fallback, "cost_usd": 0.001}))
    assert facts.fell_back is fell_back
