"""Router learning benchmark (issue 5): does the router learn to pick good panels?

A simulated world of 8 models x 5 categories (worlds/router-8x5.toml: accuracies that
differ by category, correlated errors, calibrated prices) answers 3,000 prompts in
sequence, in process: the simulator's pure answering functions, the project's judge
code and the project's router. Ground truth is recorded after each prompt and the
router's profile snapshot is updated with the read models' maths (ProfileBuilder).

Compared in the same run, all with the same judge and k seats:
  router            the router (no per-run budget)
  router_informed   the same panels, judged with the members' posterior accuracies
  router_budgeted   the router with a per-run budget: what the fixed panel spends on
                    the prompt, paced (unspent money carries over; its own learning run)
  random            k distinct models at random
  fixed_best        the k models with the best true accuracy over all categories
  best_single       the single model with the best true accuracy over all categories
  oracle            per category, the k models with the best true accuracy there

Prints JSON (accuracy over the last 1,000 prompts, cost per prompt, the targets) and
writes a PNG of the learning curves. Also times router decisions with 50 candidate
models and 20 categories, against encoding the decision's panel.selected event (a
baseline taken in the same run, as the machine is shared and noisy).

    python ops/bench/router_learning.py [--prompts 3000] [--judge vote|judge-weak|...]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from service.config import Config
from service.domain.events import Message, PanelMember, PanelSelected
from service.domain.judging import Candidate, Decision, build_ballot, parse_judge_output, vote
from service.domain.profiles import DEFAULT_TENANT, ProfileBuilder, TenantProfiles
from service.domain.scoring import answers_match
from service.orchestration.plan import RouteRequest, stable_seed
from service.orchestration.router import Router
from service.providers.simulator.answering import judge_reply, panel_reply
from service.providers.simulator.bank import Question
from service.providers.simulator.protocol import count_tokens
from service.providers.simulator.world import World, load_world
from service.serving import simulator_config

ROOT = Path(__file__).resolve().parents[2]
WORLD = ROOT / "service/providers/simulator/worlds/router-8x5.toml"
PREFIX = "sim/"


@dataclass
class Line:
    """One strategy's record: correct or not, and cost, per prompt."""

    correct: list[bool] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    panels: dict[str, int] = field(default_factory=dict)

    def add(self, category: str, correct: bool, cost: float, panel: Sequence[str]) -> None:
        self.categories.append(category)
        self.correct.append(correct)
        self.cost.append(cost)
        key = "+".join(sorted(m.removeprefix(PREFIX) for m in panel))
        self.panels[key] = self.panels.get(key, 0) + 1

    def summary(self, last: int) -> dict[str, object]:
        tail = self.correct[-last:]
        top = sorted(self.panels.items(), key=lambda kv: -kv[1])[:3]
        by_category: dict[str, list[bool]] = {}
        for category, right in zip(self.categories[-last:], tail, strict=True):
            by_category.setdefault(category, []).append(right)
        return {
            "accuracy_last": round(100 * sum(tail) / len(tail), 2),
            "accuracy_all": round(100 * sum(self.correct) / len(self.correct), 2),
            "cost_per_prompt_usd": round(statistics.fmean(self.cost), 8),
            "cost_per_prompt_last_usd": round(statistics.fmean(self.cost[-last:]), 8),
            "accuracy_last_by_category": {
                c: round(100 * sum(v) / len(v), 1) for c, v in sorted(by_category.items())
            },
            "top_panels": dict(top),
        }


class Simulation:
    """The world's models answering, and the judge deciding, all in process."""

    def __init__(self, world: World, judge: str) -> None:
        self.world = world
        self.judge = judge

    def answer(
        self, model: str, question: Question, prompt_no: int, occurrence: int
    ) -> tuple[str, float, int]:
        """A model's reply to a question, its cost and completion tokens. Keyed by
        (prompt, model, seat occurrence): every strategy sees the same answer."""
        spec = self.world.models[model.removeprefix(PREFIX)]
        text = panel_reply(
            self.world, spec, question, stable_seed(str(prompt_no), model, str(occurrence))
        )
        tokens_in, tokens_out = count_tokens(question.prompt) + 3, count_tokens(text)
        cost = (tokens_in * spec.input_price_per_m + tokens_out * spec.output_price_per_m) / 1e6
        return text, cost, tokens_out

    def decide(
        self, question: Question, candidates: list[Candidate], prompt_no: int,
        weights: dict[str, float] | None,
    ) -> tuple[Decision, float]:  # fmt: skip
        """The judge's decision and its cost (a vote costs nothing)."""
        if self.judge == "vote":
            return vote(candidates, weights), 0.0
        spec = self.world.models[self.judge]
        seed = stable_seed(str(prompt_no), "judge")
        ballot = build_ballot("synthesize", question.prompt, candidates, seed, weights)
        raw = judge_reply(self.world, spec, ballot.task, seed)
        prompt = msgspec.json.encode(ballot.task).decode()
        cost = (
            count_tokens(prompt) * spec.input_price_per_m
            + count_tokens(raw) * spec.output_price_per_m
        ) / 1e6
        try:
            return parse_judge_output(raw, ballot), cost
        except ValueError:
            return vote(candidates), cost  # the configured fallback

    def run_panel(
        self, panel: Sequence[str], question: Question, prompt_no: int,
        weights_for: Callable[[list[tuple[str, str]]], dict[str, float]] | None = None,
    ) -> Outcome:  # fmt: skip
        """Answer with a panel, then judge."""
        seen: dict[str, int] = {}
        candidates, members = [], []
        for index, model in enumerate(panel):
            seen[model] = seen.get(model, 0) + 1
            text, cost, tokens = self.answer(model, question, prompt_no, seen[model])
            member_id = f"m{index + 1}"
            candidates.append(Candidate(member_id, text))
            right = answers_match(text, question.expected)
            members.append(Seat(member_id, model, right, cost, tokens))
        weights = weights_for([(m.member_id, m.model) for m in members]) if weights_for else None
        decision, judge_cost = self.decide(question, candidates, prompt_no, weights)
        right = answers_match(decision.final_answer, question.expected)
        return Outcome(right, sum(m.cost for m in members) + judge_cost, members, decision)


@dataclass(frozen=True, slots=True)
class Seat:
    """One panel member's answer on one prompt."""

    member_id: str
    model: str
    right: bool
    cost: float
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """A panel's result on one prompt."""

    right: bool
    cost: float
    members: list[Seat]
    decision: Decision


class RouterLine:
    """The router learning from its own panels: snapshot updated after every prompt,
    with the read models' maths (calls, judge verdicts, ground truth, co-failure)."""

    def __init__(self, config: Config, pool: tuple[str, ...], k: int) -> None:
        self.router = Router(config)
        self.builder = ProfileBuilder()
        self.pool = pool
        self.k = k

    def panel(self, question: Question, prompt_no: int, budget: float | None) -> tuple[str, ...]:
        """The router's panel for this prompt."""
        request = RouteRequest(k=self.k, pool=self.pool, budget_usd=budget)
        seed = stable_seed(f"bench-{prompt_no}", "router")
        messages = [Message(role="user", content=question.prompt)]
        decided = self.router.decide(
            question.category, request, seed, tenant=DEFAULT_TENANT, messages=messages
        )
        return decided.seats

    def weights(self, category: str) -> Callable[[list[tuple[str, str]]], dict[str, float]]:
        """Judge weights: each member's posterior accuracy in the category."""
        return lambda members: self.router.member_weights(category, members, tenant=DEFAULT_TENANT)

    def learn(self, question: Question, outcome: Outcome, prompt_no: int) -> None:
        """Record what happened (as the log and read models would) and refresh."""
        category = question.category
        models = {m.member_id: m.model for m in outcome.members}
        for m in outcome.members:
            self.builder.record_call(
                m.model, category, failed=False, cost_usd=m.cost, latency_ms=0.0,
                output_tokens=m.output_tokens,
            )  # fmt: skip
        verdicts = [(models[v.member_id], v.agrees) for v in outcome.decision.verdicts]
        self.builder.record_verdicts(category, verdicts)
        self.builder.record_outcome(category, [(m.model, m.right) for m in outcome.members])
        checkpoint = f"0:{prompt_no}"
        snapshot = self.builder.snapshot(checkpoint)
        self.router.install(TenantProfiles(checkpoint, {DEFAULT_TENANT: snapshot}))


def true_best(world: World, models: Sequence[str], k: int, category: str | None) -> list[str]:
    """The k models with the best true accuracy (in a category, or on average)."""
    categories = [category] if category else sorted(world.categories)

    def accuracy(model: str) -> float:
        name = model.removeprefix(PREFIX)
        return statistics.fmean(world.true_accuracy(name, c) for c in categories)

    return sorted(models, key=lambda m: -accuracy(m))[:k]


LINES = (
    "router",
    "router_informed",
    "router_budgeted",
    "random",
    "fixed_best",
    "best_single",
    "oracle",
)


def run_learning(
    prompts: int, k: int, seed: int, judge: str
) -> tuple[dict[str, Line], dict[str, object]]:
    """Every strategy on the same prompt sequence; returns their records and the set-up."""
    world = load_world(WORLD)
    sim = Simulation(world, judge)
    pool = tuple(PREFIX + n for n in world.names("panel"))
    prices = {n: (m.input_price_per_m, m.output_price_per_m) for n, m in world.models.items()}
    config = simulator_config(sorted(world.models), prices, "http://127.0.0.1:1/v1")
    rng = random.Random(seed)
    categories = sorted(world.categories)
    fixed = true_best(world, pool, k, None)
    single = true_best(world, pool, 1, None)
    oracle = {c: true_best(world, pool, k, c) for c in categories}
    routed, budgeted = RouterLine(config, pool, k), RouterLine(config, pool, k)
    lines = {name: Line() for name in LINES}
    savings = 0.0
    for n in range(prompts):
        category = rng.choice(categories)
        question = rng.choice(world.bank.in_category(category))
        spent: dict[str, float] = {}
        for name, chosen in (
            ("random", rng.sample(pool, k)),
            ("fixed_best", fixed),
            ("best_single", single),
            ("oracle", oracle[category]),
        ):
            result = sim.run_panel(chosen, question, n)
            lines[name].add(category, result.right, result.cost, chosen)
            spent[name] = result.cost
        panel = routed.panel(question, n, None)
        outcome = sim.run_panel(panel, question, n)
        lines["router"].add(category, outcome.right, outcome.cost, panel)
        informed = sim.run_panel(panel, question, n, routed.weights(category))
        lines["router_informed"].add(category, informed.right, informed.cost, panel)
        routed.learn(question, outcome, n)
        # A per-run budget: what the fixed panel spends on this prompt, plus what earlier
        # runs left unspent or minus what they overspent (a caller pacing its spend by
        # the costs runs report), between half and twice the fixed panel's cost.
        fixed_cost = spent["fixed_best"]
        budget = fixed_cost + min(max(savings, -fixed_cost / 2), fixed_cost)
        capped = budgeted.panel(question, n, budget)
        capped_outcome = sim.run_panel(capped, question, n)
        savings += fixed_cost - capped_outcome.cost
        lines["router_budgeted"].add(category, capped_outcome.right, capped_outcome.cost, capped)
        budgeted.learn(question, capped_outcome, n)
    setup: dict[str, object] = {
        "world": str(WORLD.relative_to(ROOT)),
        "label": "simulated providers (a test double), not real models",
        "prompts": prompts,
        "k": k,
        "judge": judge,
        "seed": seed,
        "fixed_best": [m.removeprefix(PREFIX) for m in fixed],
        "best_single": single[0].removeprefix(PREFIX),
        "oracle": {c: [m.removeprefix(PREFIX) for m in p] for c, p in oracle.items()},
    }
    return lines, setup


# --- decision time ------------------------------------------------------------------


def decision_timing(decisions: int, seed: int) -> dict[str, object]:
    """Router.decide with 50 candidates and 20 categories, on a well-filled snapshot,
    against encoding the panel.selected event that records each decision."""
    rng = random.Random(seed)
    models = [f"m{i:02d}" for i in range(50)]
    categories = [f"c{j:02d}" for j in range(20)]
    builder = ProfileBuilder()
    skill = {(m, c): rng.uniform(0.3, 0.95) for m in models for c in categories}
    for _ in range(30_000):
        category = rng.choice(categories)
        panel = rng.sample(models, 3)
        builder.record_outcome(category, [(m, rng.random() < skill[m, category]) for m in panel])
        for m in panel:
            cost = rng.uniform(1e-5, 5e-3)
            builder.record_call(
                m, category, failed=rng.random() < 0.03, cost_usd=cost, latency_ms=1,
                output_tokens=rng.randint(5, 400),
            )  # fmt: skip
    prices = "\n".join(
        f'[models."{m}"]\nprovider = "p"\ninput_price = {rng.uniform(0.1, 10):.3f}\n'
        f"output_price = {rng.uniform(0.3, 30):.3f}"
        for m in models
    )
    from service.config import parse_config

    preset = '[presets.default]\npanel = "auto"\njudge = { kind = "vote" }\n'  # required
    config = parse_config(f'[providers.p]\nbase_url = "http://p.test/v1"\n{prices}\n{preset}')
    router = Router(
        config, profiles=TenantProfiles("1:1", {DEFAULT_TENANT: builder.snapshot("1:1")})
    )
    request = RouteRequest(k=3, pool=tuple(models), budget_usd=1e-2)
    messages = [Message(role="user", content="Which of these is a prime? A) 21 B) 23 C) 25")]
    decide_s, encode_s = [], []
    for i in range(decisions + 200):
        started = time.perf_counter()
        decided = router.decide(
            categories[i % 20], request, i, tenant=DEFAULT_TENANT, messages=messages
        )
        middle = time.perf_counter()
        event = PanelSelected(
            members=[PanelMember(member_id=f"m{j}", model=m) for j, m in enumerate(decided.seats)],
            method="router",
            router=decided.decision,
        )
        msgspec.json.encode(event)
        ended = time.perf_counter()
        if i >= 200:  # warm-up: the first decision per category fills the snapshot's memo
            decide_s.append(middle - started)
            encode_s.append(ended - middle)
    return {
        "candidates": len(models),
        "categories": len(categories),
        "decisions": decisions,
        "decide_p50_ms": round(_quantile(decide_s, 0.5) * 1e3, 4),
        "decide_p99_ms": round(_quantile(decide_s, 0.99) * 1e3, 4),
        "encode_event_p50_ms": round(_quantile(encode_s, 0.5) * 1e3, 4),
        "ratio_p50_decide_to_encode": round(_quantile(decide_s, 0.5) / _quantile(encode_s, 0.5), 2),
        "target_p99_ms": 1.0,
        "met": _quantile(decide_s, 0.99) * 1e3 < 1.0,
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


# --- report -------------------------------------------------------------------------


def targets(summary: dict[str, dict[str, object]], line: str) -> dict[str, object]:
    """The issue's targets for one router line, each with the numbers it compares."""

    def acc(name: str) -> float:
        return float(summary[name]["accuracy_last"])  # type: ignore[arg-type]

    def cost(name: str) -> float:
        return float(summary[name]["cost_per_prompt_usd"])  # type: ignore[arg-type]

    return {
        "within_2_points_of_oracle": {
            "router": acc(line), "oracle": acc("oracle"),
            "met": acc(line) >= acc("oracle") - 2.0,
        },
        "at_least_5_points_above_random": {
            "router": acc(line), "random": acc("random"),
            "met": acc(line) >= acc("random") + 5.0,
        },
        "at_or_above_fixed_best_at_no_more_cost": {
            "router": acc(line), "fixed_best": acc("fixed_best"),
            "router_cost_usd": cost(line), "fixed_best_cost_usd": cost("fixed_best"),
            "met": acc(line) >= acc("fixed_best") and cost(line) <= cost("fixed_best"),
        },
    }  # fmt: skip


def plot(lines: dict[str, Line], path: Path, window: int, title: str) -> None:
    """Learning curves: accuracy over a sliding window of prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 5.5))
    for name, line in lines.items():
        xs, ys, total = [], [], 0
        for i, right in enumerate(line.correct):  # the first points: all prompts so far
            total += right
            if i >= window:
                total -= line.correct[i - window]
            if i + 1 >= 20:
                xs.append(i + 1)
                ys.append(100 * total / min(i + 1, window))
        style = "-" if name.startswith("router") else "--"
        axes.plot(xs, ys, style, label=name, linewidth=1.6 if name == "router" else 1.0)
    axes.set_xlabel("prompt")
    axes.set_ylabel(f"accuracy over the last {window} prompts (%)")
    axes.set_ylim(bottom=60)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=3000)
    parser.add_argument("--last", type=int, default=1000, help="accuracy over the last N")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--judge", default="vote", help="vote, or a judge model of the world")
    parser.add_argument("--decisions", type=int, default=5000, help="timed decisions")
    parser.add_argument("--out", type=Path, default=Path("router_learning.png"))
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    lines, setup = run_learning(args.prompts, args.k, args.seed, args.judge)
    summary = {name: line.summary(args.last) for name, line in lines.items()}
    report: dict[str, object] = {
        "benchmark": "router_learning",
        "setup": setup,
        "last": args.last,
        "results": summary,
        "targets": {line: targets(summary, line) for line in ("router", "router_budgeted")},
        "informed_minus_plain_points": round(
            float(summary["router_informed"]["accuracy_last"])  # type: ignore[arg-type]
            - float(summary["router"]["accuracy_last"]),  # type: ignore[arg-type]
            2,
        ),
        "decision_time": decision_timing(args.decisions, args.seed),
        "note": "timings are noisy when other work shares the machine",
    }
    if not args.no_plot:
        title = f"router learning: 8 models x 5 categories, k={args.k}, judge={args.judge}"
        plot(lines, args.out, 200, title)
        report["plot"] = str(args.out)
    report["seconds"] = round(time.perf_counter() - started, 1)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
