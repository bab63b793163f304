"""Evaluation datasets are checked whole, naming the bad line; keys make re-runs find
their runs; the summary counts failed calls and runs as not correct."""

from __future__ import annotations

import json

import httpx
import pytest

from service.evaluation import (
    DatasetError,
    EvalFailed,
    EvalItem,
    EvalSpec,
    ItemResult,
    parse_dataset,
    run_eval,
    summarize,
)
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


# --- running against a service (in memory, behind httpx.MockTransport) --------------


class FakeService:
    """POST /v1/fusions and /v1/runs/{id}/outcomes as the service answers them: one run
    per Idempotency-Key (the same run when the key comes again), one outcome per run.

    ``cut_short`` names the keys whose run the service closes without an answer
    (reason shutdown, abandoned, ...); ``overloaded`` is how many fusion requests are
    first answered 503, as when the service's open-run bound is reached."""

    def __init__(self, cut_short: dict[str, str] | None = None, overloaded: int = 0) -> None:
        self.cut_short = cut_short or {}
        self.overloaded = overloaded
        self.runs: dict[str, dict[str, object]] = {}  # by Idempotency-Key
        self.outcomes: dict[str, str] = {}  # run id -> expected answer
        self.fusion_keys: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        key = request.headers["idempotency-key"]
        if request.url.path == "/v1/fusions":
            return self.fuse(key)
        run_id = request.url.path.split("/")[3]
        existing = run_id in self.outcomes
        self.outcomes.setdefault(run_id, json.loads(request.content)["expected"])
        run = next(r for r in self.runs.values() if r["run_id"] == run_id)
        body = {"final_correct": run["answer"] == "4", "members": [], "existing": existing}
        return httpx.Response(200 if existing else 201, json=body)

    def fuse(self, key: str) -> httpx.Response:
        self.fusion_keys.append(key)
        if self.overloaded:
            self.overloaded -= 1
            problem = {"title": "Overloaded", "detail": "at capacity; retry shortly"}
            return httpx.Response(503, json=problem, headers={"retry-after": "0"})
        reason = self.cut_short.get(key)
        run = self.runs.setdefault(
            key,
            {
                "run_id": f"run-{len(self.runs) + 1}",
                "status": "failed" if reason else "finalized",
                "answer": None if reason else "4",
                "members": [],
                "cost_usd": 0.0,
                "latency_ms": None if reason else 10.0,
                "failure_reason": reason,
            },
        )
        return httpx.Response(502 if reason else 200, json=run)

    async def evaluate(self, spec: EvalSpec, items: list[EvalItem]) -> list[ItemResult]:
        transport = httpx.MockTransport(self)
        async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
            return await run_eval(client, spec, items)


async def test_a_line_whose_run_the_service_cut_short_runs_again_on_resume() -> None:
    [item] = parse_dataset(lines(GOOD))
    spec = EvalSpec(name="bank")
    key = spec.idempotency_key(item)
    # the service stopped mid-eval: the line's run was closed as shutdown
    service = FakeService(cut_short={key: "shutdown"})
    service.fuse(key)

    [resumed] = await service.evaluate(spec, [item])
    assert (resumed.run.run_id, resumed.run.status) == ("run-2", "finalized")
    assert resumed.outcome.final_correct is True
    assert service.outcomes == {"run-2": "4"}  # nothing recorded on the cut-short run

    [again] = await service.evaluate(spec, [item])  # a later resume finds the same rerun
    assert again.run.run_id == "run-2" and again.outcome.existing
    assert len(service.runs) == 2
    assert service.fusion_keys[1:] == [key, f"{key}:retry-1"] * 2


async def test_a_genuine_failure_is_scored_and_a_line_cut_short_each_time_stops() -> None:
    [item] = parse_dataset(lines(GOOD))
    spec = EvalSpec(name="bank")
    key = spec.idempotency_key(item)
    quorum = FakeService(cut_short={key: "quorum_not_met"})
    [failed] = await quorum.evaluate(spec, [item])
    assert (failed.run.status, failed.outcome.final_correct) == ("failed", False)
    assert quorum.fusion_keys == [key]  # the panel's failure is the line's result

    keys = [key, *(f"{key}:retry-{n}" for n in range(1, 4))]
    crashing = FakeService(cut_short=dict.fromkeys(keys, "abandoned"))
    with pytest.raises(EvalFailed, match=r"line 1: .*abandoned"):
        await crashing.evaluate(spec, [item])
    assert crashing.fusion_keys == keys  # bounded
    assert crashing.outcomes == {}


async def test_an_overloaded_service_is_asked_again() -> None:
    [item] = parse_dataset(lines(GOOD))
    service = FakeService(overloaded=1)
    [result] = await service.evaluate(EvalSpec(name="bank"), [item])
    assert result.run.status == "finalized" and result.outcome.final_correct is True
    assert len(service.fusion_keys) == 2
