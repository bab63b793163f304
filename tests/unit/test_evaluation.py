"""Evaluation datasets are checked whole, naming the bad line; keys make re-runs find
their runs; the summary counts failed calls and runs as not correct."""

from __future__ import annotations

import json

import pytest

from service.evaluation import DatasetError, EvalSpec, ItemResult, parse_dataset, summarize
from service.evaluation.results import FusionReply, MemberGrade, MemberReply, OutcomeReply


def lines(*rows: object) -> list[bytes]:
    return [(r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in rows]


GOOD = {"prompt": "What is 2+2?", "category": "arithmetic", "expected": "4"}


def test_lines_become_items_keyed_by_id_or_content() -> None:
    items = parse_dataset(
        lines({**GOOD, "id": 7}, "", {**GOOD, "expected": 1000.0, "source": "extra is fine"})
    )
    assert [(i.line, i.id, i.expected) for i in items] == [(1, "7", "4"), (3, None, "1000.0")]
    assert items[0].key == "id:7"
    assert items[1].key.startswith("sha256:")
    assert parse_dataset(lines(GOOD))[0].key == parse_dataset(lines("", GOOD))[0].key


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ('{"prompt": "x", "category": "a"', "not valid JSON"),
        ('["x", "a", "4"]', "Expected `object`"),
        ({"prompt": "x", "category": "a"}, "missing required field `expected`"),
        ({**GOOD, "prompt": ""}, "$.prompt"),
        ({**GOOD, "expected": " "}, "expected is blank"),
        ({**GOOD, "expected": True}, "$.expected"),
        ({**GOOD, "category": "c" * 65}, "$.category"),
    ],
)
def test_a_bad_line_is_named(bad: object, says: str) -> None:
    with pytest.raises(DatasetError, match=r"^line 3: ") as caught:
        parse_dataset(lines(GOOD | {"id": 1}, GOOD | {"id": 2}, bad))
    assert caught.value.line == 3
    assert says in str(caught.value)


def test_repeated_lines_are_refused() -> None:
    with pytest.raises(DatasetError, match="line 2: same id as line 1"):
        parse_dataset(lines({**GOOD, "id": "a"}, {**GOOD, "id": "a", "expected": "5"}))
    with pytest.raises(DatasetError, match="line 3: same prompt, category and expected"):
        parse_dataset(lines(GOOD, "", GOOD))
    with pytest.raises(DatasetError, match="no lines"):
        parse_dataset(lines("", "  "))


def test_the_idempotency_key_names_the_evaluation_and_its_panel() -> None:
    [item] = parse_dataset(lines(GOOD))
    spec = EvalSpec(name="bank", preset="default")
    assert spec.idempotency_key(item) == EvalSpec(name="bank", preset="default").idempotency_key(
        item
    )
    others = [
        EvalSpec(name="bank2", preset="default"),
        EvalSpec(name="bank", preset="vote"),
        EvalSpec(name="bank", preset="default", judge=(("kind", "vote"),)),
    ]
    assert spec.idempotency_key(item) not in {o.idempotency_key(item) for o in others}
    assert len(spec.idempotency_key(item)) <= 200  # the API's header limit


def result(
    final: bool | None, status: str, members: list[tuple[str, str, bool | None, float | None]]
) -> ItemResult:
    [item] = parse_dataset(lines(GOOD))
    replies = [
        MemberReply(member_id=f"m{i}", model=model, status=s, cost_usd=0.5, latency_ms=latency)
        for i, (model, s, _, latency) in enumerate(members)
    ]
    grades = [MemberGrade(member_id=f"m{i}", correct=c) for i, (_, _, c, _) in enumerate(members)]
    run = FusionReply(
        run_id="r",
        status=status,
        answer=None,
        members=replies,
        cost_usd=2.0,
        latency_ms=None if status == "failed" else 100.0,
    )
    return ItemResult(item, run, OutcomeReply(final_correct=final, members=grades, existing=False))


def test_the_summary_counts_failures_as_not_correct() -> None:
    rows = summarize(
        [
            result(
                True, "finalized", [("b", "succeeded", True, 10.0), ("a", "failed", None, 30.0)]
            ),
            result(None, "failed", [("b", "succeeded", False, 20.0), ("a", "pending", None, None)]),
            result(
                False, "finalized", [("b", "succeeded", True, 30.0), ("b", "succeeded", True, 40.0)]
            ),
        ]
    )
    by_system = {r.system: r for r in rows}
    assert [r.system for r in rows] == ["final", "a", "b"]
    final, a, b = by_system["final"], by_system["a"], by_system["b"]
    assert (final.n, final.correct, final.failed) == (3, 1, 1)
    assert final.accuracy == pytest.approx(1 / 3)
    assert (final.mean_cost_usd, final.mean_latency_ms) == (2.0, 100.0)
    assert (a.n, a.correct, a.failed, a.accuracy) == (2, 0, 2, 0.0)
    assert a.mean_latency_ms == 30.0  # the pending seat has no latency to average
    assert (b.n, b.correct, b.failed, b.accuracy) == (4, 3, 0, 0.75)
    assert b.mean_latency_ms == pytest.approx(25.0)
