"""Judge replies that contradict themselves or the prompt are refused (the fallback runs)."""

from __future__ import annotations

import json

import pytest

from service.domain.judging import (
    Candidate,
    JudgeOutputError,
    build_ballot,
    parse_judge_output,
)

CANDIDATES = [Candidate("m1", "Answer: 4"), Candidate("m2", "Answer: 5"), Candidate("m3", "4")]


def reply(chosen: str, verdicts: list[dict[str, object]]) -> str:
    return json.dumps({"final_answer": "4", "chosen": chosen, "verdicts": verdicts})


def test_a_select_judge_that_judges_its_own_choice_wrong_is_refused() -> None:
    ballot = build_ballot("select", "2+2?", CANDIDATES, seed=1)
    label = next(iter(ballot.labels))
    with pytest.raises(JudgeOutputError, match="judged it wrong"):
        parse_judge_output(reply(label, [{"label": label, "agrees": False}]), ballot)
    decided = parse_judge_output(reply(label, [{"label": label, "agrees": True}]), ballot)
    assert decided.final_answer == ballot.texts[label]


@pytest.mark.parametrize("score", [7, -0.1, 1.5])
def test_a_score_outside_zero_to_one_is_refused(score: float) -> None:
    ballot = build_ballot("select", "2+2?", CANDIDATES, seed=1)
    label = next(iter(ballot.labels))
    verdicts = [{"label": label, "agrees": True, "score": score}]
    with pytest.raises(JudgeOutputError):
        parse_judge_output(reply(label, verdicts), ballot)


def test_scores_at_the_bounds_are_kept() -> None:
    ballot = build_ballot("select", "2+2?", CANDIDATES, seed=1)
    first, second = list(ballot.labels)[:2]
    verdicts = [
        {"label": first, "agrees": True, "score": 1},
        {"label": second, "agrees": False, "score": 0},
    ]
    decided = parse_judge_output(reply(first, verdicts), ballot)
    assert [v.score for v in decided.verdicts] == [1.0, 0.0]
