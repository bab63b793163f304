"""The provider test double's world: bank, calibration shape, answering and judging."""

from __future__ import annotations

import contextlib
import io
import json
import random
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.domain.judging import (
    Candidate,
    JudgeOutputError,
    build_ballot,
    judge_messages,
    parse_judge_output,
)
from service.domain.scoring import answers_match, normalize_answer
from service.providers.simulator import (
    CATEGORIES,
    World,
    WorldError,
    default_world,
    generate_bank,
    load_world,
    world_from_toml,
)
from service.providers.simulator.answering import is_correct, known_question, reply, short_answer
from service.providers.simulator.calibration import CategoryCalibration, measure
from service.providers.simulator.command import simulate_command
from service.providers.simulator.expressions import parse_arithmetic

WORLDS = Path(__file__).parents[2] / "service" / "providers" / "simulator" / "worlds"

# SIMULATOR-CALIBRATION.md: ARC, Winogrande, MBPP accuracy per model.
CALIBRATION = {
    "model-a": (0.945, 0.859, 0.686),
    "model-b": (0.826, 0.641, 0.653),
    "model-c": (0.846, 0.679, 0.541),
    "model-d": (0.900, 0.562, 0.597),
    "model-e": (0.895, 0.754, 0.386),
    "model-f": (0.821, 0.517, 0.604),
    "model-g": (0.654, 0.585, 0.518),
    "model-h": (0.582, 0.478, 0.642),
    "model-i": (0.796, 0.503, 0.330),
    "model-j": (0.664, 0.566, 0.344),
    "model-k": (0.653, 0.529, 0.370),
}


@pytest.fixture(scope="module")
def world() -> World:
    return default_world()


@pytest.fixture(scope="module")
def measured(world: World) -> dict[str, CategoryCalibration]:
    return measure(world)


def test_default_world_accuracies_follow_the_calibration_table(world: World) -> None:
    assert world.names("panel") == list(CALIBRATION)
    for model, (arc, winogrande, mbpp) in CALIBRATION.items():
        assert world.true_accuracy(model, "multiple_choice") == arc
        assert world.true_accuracy(model, "two_choice") == winogrande
        assert world.true_accuracy(model, "code") == mbpp


def test_no_model_is_best_everywhere_and_prices_span_two_orders(world: World) -> None:
    panel = world.names("panel")
    leaders = {c: max(panel, key=lambda m: world.true_accuracy(m, c)) for c in CATEGORIES}
    assert len(set(leaders.values())) >= 3
    prices = [world.models[m].input_price_per_m for m in panel]
    assert max(prices) / min(prices) >= 50
    assert max(prices) == world.models["model-a"].input_price_per_m


def test_simulated_answers_reproduce_each_accuracy(
    world: World, measured: dict[str, CategoryCalibration]
) -> None:
    for category, calibration in measured.items():
        assert calibration.questions == 1000
        for model, accuracy in calibration.accuracy.items():
            expected = world.true_accuracy(model, category)
            assert accuracy == pytest.approx(expected, abs=0.045), (model, category)


def test_errors_are_correlated_like_the_real_benchmark(
    measured: dict[str, CategoryCalibration],
) -> None:
    arc, winogrande, mbpp = (measured[c] for c in ("multiple_choice", "two_choice", "code"))
    assert arc.defeat_threshold == 8
    assert 0.28 <= arc.mean_error_correlation <= 0.48
    assert 0.32 <= mbpp.mean_error_correlation <= 0.52
    assert winogrande.mean_error_correlation <= 0.15
    assert arc.mean_error_correlation > winogrande.mean_error_correlation + 0.15
    # Items that defeat most models: several % on ARC, about a third on MBPP.
    assert 0.04 <= arc.defeated_share <= 0.13
    assert 0.25 <= mbpp.defeated_share <= 0.42


def test_wrong_answers_gather_on_the_distractor_so_majority_fails_on_hard_items(
    world: World,
) -> None:
    panel = [world.models[m] for m in world.names("panel")]
    hard = wrong_majority = 0
    for question in world.bank.in_category("multiple_choice"):
        answers = [short_answer(world, m, question, 0) for m in panel]
        if sum(a != question.expected for a in answers) >= 8:
            hard += 1
            top, _ = Counter(answers).most_common(1)[0]
            wrong_majority += top == question.distractor
    assert hard > 0
    assert wrong_majority / hard > 0.8


def test_a_sample_is_reproducible_and_samples_differ(world: World) -> None:
    model = world.models["model-g"]
    questions = world.bank.in_category("code")[:300]
    first = [is_correct(world, model, q, 11) for q in questions]
    assert first == [is_correct(world, model, q, 11) for q in questions]
    assert first != [is_correct(world, model, q, 12) for q in questions]
    again = default_world()
    assert first == [is_correct(again, again.models["model-g"], q, 11) for q in questions]


def test_bank_is_deterministic_unique_and_exports_a_dataset(tmp_path: Path) -> None:
    bank = generate_bank(3, per_category=200)
    assert [q.prompt for q in bank] == [q.prompt for q in generate_bank(3, per_category=200)]
    assert [q.prompt for q in bank] != [q.prompt for q in generate_bank(4, per_category=200)]
    assert len({q.prompt for q in bank}) == len(bank) == 1000
    for q in bank:
        assert 0 < q.difficulty < 1
        assert q.expected not in q.wrong_answers and q.distractor == q.wrong_answers[0]
        if q.category == "multiple_choice":
            assert q.expected in "ABCD" and f"\n{q.expected}) " in q.prompt
        if q.category == "two_choice":
            assert {q.expected, q.distractor} == {"A", "B"}
    path = tmp_path / "bank.jsonl"
    assert bank.export_jsonl(path) == 1000
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert set(rows[0]) == {"id", "category", "prompt", "expected"}
    assert bank.lookup(rows[5]["prompt"]) is bank.by_id[rows[5]["id"]]


def test_computed_questions_have_the_right_answers() -> None:
    bank = generate_bank(5, per_category=150)
    for q in bank.in_category("code"):
        snippet = q.prompt.split("```python\n")[1].removesuffix("\n```")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(snippet, {})  # our own generated snippet
        assert printed.getvalue().strip() == q.expected, q.prompt
    for q in bank.in_category("arithmetic"):
        expression = q.prompt.removeprefix("What is ").split("?")[0]
        assert str(eval(expression, {})) == q.expected, q.prompt


def test_an_unknown_prompt_gets_a_plausible_deterministic_answer(world: World) -> None:
    model = world.models["model-c"]
    text = reply(world, model, "How many legs do 3 spiders and 2 cats have?", 5)
    assert text == reply(world, model, "How many legs do 3 spiders and 2 cats have?", 5)
    assert text.splitlines()[-1].startswith("Answer: ")


# README and the start banner's example request; not a bank question.
QUICK_START = "What is 17 + 25 * 2? Reply with the number."


def test_the_quick_start_prompt_is_computed_and_accurate_models_answer_67(world: World) -> None:
    assert world.bank.lookup(QUICK_START) is None
    question = known_question(world, QUICK_START)
    assert question is not None and question.category == "arithmetic"
    assert question.expected == "67" and question.distractor == "84"  # left to right
    accurate = [m for m in world.names("panel") if world.true_accuracy(m, "arithmetic") >= 0.85]
    answers = [
        normalize_answer(reply(world, world.models[m], QUICK_START, sample))
        for m in accurate
        for sample in range(40)
    ]
    assert len(accurate) >= 3
    assert answers.count("67") / len(answers) > 0.8
    again = default_world()
    assert [reply(again, again.models[m], QUICK_START, 3) for m in accurate] == [
        reply(world, world.models[m], QUICK_START, 3) for m in accurate
    ]


def test_arithmetic_outside_the_bank_is_answered_at_the_category_accuracy(world: World) -> None:
    rng = random.Random(11)
    prompts: list[str] = []
    while len(prompts) < 800:
        a, b, c = (rng.randint(2, 60) for _ in range(3))
        op1, op2 = rng.choice("+-*"), rng.choice("+-*")
        prompt = f"What is ({a} {op1} {b}) {op2} {c}?"
        if world.bank.lookup(prompt) is None and prompt not in prompts:
            prompts.append(prompt)
    questions = [known_question(world, p) for p in prompts]
    assert all(q is not None for q in questions)
    for name in ("model-e", "model-j"):
        right = sum(
            answers_match(reply(world, world.models[name], p, 1), str(q.expected))
            for p, q in zip(prompts, questions, strict=True)
            if q is not None
        )
        assert abs(right / len(prompts) - world.true_accuracy(name, "arithmetic")) < 0.07


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (QUICK_START, "67"),
        ("What is (17 + 25) * 2?", "84"),
        ("what is -3 - -4 * 2", "5"),
        ("Calculate 7 / 2 =", "3.5"),
        ("2+2", "4"),
        ("What is 7 / (3 - 3)?", None),
        ("What is 42?", None),
        ("What is 2 ** 10?", None),
        ("What is 2 + (3?", None),
        ("What is __import__('os').getcwd()?", None),
        ("How many legs do 3 spiders and 2 cats have?", None),
        ("What's 12 - 3 = ?", "9"),
        ("Compute 10 / 4. Reply with just the number.", None),  # "4." is no number
        ("Compute 10 / 4 Reply with just the number.", "2.5"),
        # Long runs of spaces: a single pattern with a lazy expression hung on these
        # (200 spaces: 47 s, the event loop of a service with the simulator inside).
        ("1" + " " * 400 + "x", None),
        ("1" + " " * 250 + "+ 2", "3"),
    ],
)
def test_arithmetic_prompts_are_computed_without_eval(prompt: str, expected: str | None) -> None:
    computed = parse_arithmetic(prompt)
    assert (computed.expected if computed else None) == expected
    if computed is not None:
        assert computed.expected not in computed.wrong_answers


def test_unknown_non_arithmetic_prompts_answer_as_before(world: World) -> None:
    # Replies recorded before arithmetic prompts were computed: the rest is unchanged.
    before = {
        ("How many legs do 3 spiders and 2 cats have?", "model-c"): ["5", "5", "5", "5"],
        ("How many legs do 3 spiders and 2 cats have?", "model-e"): ["6", "5", "6", "6"],
        ("Is the sky green?", "model-c"): ["yes", "yes", "yes", "no"],
        ("Which is bigger?\nA) 3\nB) 5", "model-e"): ["A", "B", "B", "B"],
    }
    for (prompt, model), answers in before.items():
        assert known_question(world, prompt) is None
        replies = [reply(world, world.models[model], prompt, sample) for sample in range(4)]
        assert replies == [f"I considered the question carefully.\nAnswer: {a}" for a in answers]


def _ballot_outcomes(world: World, judge: str, kind: str, count: int = 400) -> tuple[int, int]:
    """(right finals, unparseable replies) on ballots with one right candidate of three."""
    right = invalid = 0
    for index, q in enumerate(world.bank.in_category("multiple_choice")[:count]):
        candidates = [
            Candidate("m1", f"Checking.\nAnswer: {q.distractor}"),
            Candidate("m2", f"Comparing.\nAnswer: {q.distractor}"),
            Candidate("m3", f"Ruling out.\nAnswer: {q.expected}"),
        ]
        ballot = build_ballot(kind, q.prompt, candidates, seed=index)
        raw = reply(world, world.models[judge], judge_messages(ballot)[-1].content, index)
        try:
            decision = parse_judge_output(raw, ballot)
        except JudgeOutputError:
            invalid += 1
            continue
        right += answers_match(decision.final_answer, q.expected)
        finals = normalize_answer(decision.final_answer)
        by_member = {v.member_id: v.agrees for v in decision.verdicts}
        assert len(by_member) == 3
        assert by_member["m3"] == (finals == q.expected)
    return right, invalid


@pytest.mark.parametrize("kind", ["select", "synthesize"])
def test_a_skilled_judge_finds_the_lone_right_candidate_far_more_often(
    world: World, kind: str
) -> None:
    strong, strong_invalid = _ballot_outcomes(world, "judge-strong", kind)
    weak, weak_invalid = _ballot_outcomes(world, "judge-weak", kind)
    assert strong_invalid == weak_invalid == 0
    assert strong / 400 > 0.85
    assert weak / 400 < 0.75
    assert strong - weak > 80


def test_the_broken_judge_never_returns_valid_output(world: World) -> None:
    right, invalid = _ballot_outcomes(world, "judge-broken", "synthesize", count=50)
    assert (right, invalid) == (0, 50)


def test_a_world_loads_from_toml() -> None:
    world = world_from_toml(
        """
        seed = 3
        questions_per_category = 20
        fixed_latency_ms = 5

        [categories.code]
        shared_difficulty = 0.7

        [[models]]
        name = "tiny"
        input_price_per_m = 0.1
        output_price_per_m = 0.3
        accuracy = { code = 0.4, arithmetic = 0.9 }
        rate_limited_rate = 0.25
        """
    )
    assert world.names() == ["tiny"]
    assert world.true_accuracy("tiny", "code") == 0.4
    assert world.true_accuracy("tiny", "short_fact") == 0.5
    assert world.category("code").shared_difficulty == 0.7
    assert len(world.bank) == 100 and world.fixed_latency_ms == 5


@pytest.mark.parametrize(
    "text",
    [
        '[[models]]\nname = "x"\nspeed = 3',
        '[[models]]\nname = "x"\ntimeout_rate = 1.5',
        '[[models]]\nname = "x"\naccuracy = { poetry = 0.5 }',
        '[[models]]\nname = "x"\n[[models]]\nname = "x"',
        "seed = 1",
        "seed = ",
    ],
)
def test_a_bad_world_file_is_refused(text: str) -> None:
    with pytest.raises(WorldError):
        world_from_toml(text)


def test_model_changes_are_validated() -> None:
    world = default_world()
    assert world.update_model("model-b", {"server_error_rate": 1.0}).server_error_rate == 1.0
    with pytest.raises(WorldError):
        world.update_model("model-b", {"server_error_rate": 2.0})
    with pytest.raises(WorldError):
        world.update_model("model-b", {"name": "model-z"})
    with pytest.raises(KeyError):
        world.update_model("model-z", {"timeout_rate": 1.0})


def test_a_sub_world_keeps_chosen_models_and_the_same_answers(world: World) -> None:
    small = world.with_models(["model-a", "model-j"])
    assert small.names() == ["model-a", "model-j"]
    question = world.bank.questions[42]
    assert reply(small, small.models["model-j"], question.prompt, 9) == reply(
        world, world.models["model-j"], question.prompt, 9
    )


def test_the_router_benchmark_world_has_eight_models_none_best_everywhere() -> None:
    world = load_world(WORLDS / "router-8x5.toml")
    panel = world.names("panel")
    assert len(panel) == 8 and world.names("judge") == ["judge-strong", "judge-weak"]
    leaders = {c: max(panel, key=lambda m: world.true_accuracy(m, c)) for c in CATEGORIES}
    assert len(set(leaders.values())) >= 3
    default = default_world()
    for name in panel:
        assert world.models[name] == default.models[name]


def test_simulate_command_exports_the_bank_and_refuses_a_bad_world(tmp_path: Path) -> None:
    path = tmp_path / "bank.jsonl"
    result = CliRunner().invoke(simulate_command, ["--export-bank", str(path), "--seed", "9"])
    assert result.exit_code == 0, result.output
    assert len(path.read_text().splitlines()) == 5000
    bad = tmp_path / "bad.toml"
    bad.write_text('[[models]]\nname = "x"\ntimeout_rate = 7\n')
    result = CliRunner().invoke(simulate_command, ["--world", str(bad)])
    assert result.exit_code != 0 and "timeout_rate" in result.output
