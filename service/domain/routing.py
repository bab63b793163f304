"""The router's maths (pure): which k models sit on the panel for a prompt, and why.

For each candidate model in the prompt's category:

- quality: a Beta posterior of answering right. Ground truth counts fully, a judge's
  agreement counts ``judge_weight`` of a label; the prior is the model's profile over
  its other categories (``prior_strength`` pseudo-observations), so a category it
  has never seen starts from its overall record.
- Thompson sampling: one draw per candidate from its posterior with a seeded RNG, times
  its availability (1 - posterior failure rate), is its score. Same snapshot, query and
  seed: same scores, same panel.
- seats are filled greedily by score minus a co-failure penalty: for each seat already
  taken, the estimated covariance of the two members' errors (how much more often they
  are wrong together than independent models would be). The same model may take
  several seats (self-fusion) when that still scores best; its penalty with itself
  starts from ``self_repeat`` (the share of its errors a second sample repeats).
- a budget: a seat is taken only if the seats left can still be paid for with the
  cheapest candidate, so the panel's expected cost never exceeds the budget. Expected
  costs: list prices for this prompt's tokens and the completion tokens the profiles
  show (``expected_costs``).
- the breaker's view is an input: resting models are skipped; one model whose
  cool-down is over is seated as a probe. When no model is closed, the probe (if any
  is due) is seated all the same and the other seats go to the best-scoring resting
  models: a panel of resting models beats no answer.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from service.domain.events import CandidateScore, Message, RouterDecision
from service.domain.profiles import ProfileSnapshot

ROUTER_VERSION = "router-v1"
_SLACK = 1e-12  # relative: keeps summed float costs under the budget, never over


@dataclass(frozen=True, slots=True, eq=False)  # identity hash: a cheap memo key
class RouterSettings:
    """The router's tuning; part of its version when changed."""

    judge_weight: float = 0.25  # a judge's agreement, as a share of a ground-truth label
    prior_strength: float = 4.0  # pseudo-observations from the model's other categories
    cofailure_weight: float = 1.0  # how much an excess joint error costs a seat
    cofailure_strength: float = 10.0  # pseudo-observations behind a pair's prior
    self_repeat: float = 0.7  # share of its errors a model repeats on a second seat
    failure_prior: float = 0.05  # call failure rate assumed before data
    failure_strength: float = 10.0
    default_output_tokens: int = 256  # for a price estimate when a model has no cost data


DEFAULT_SETTINGS = RouterSettings()


@dataclass(frozen=True, slots=True)
class PoolModel:
    """A candidate model and its prices (USD per million input / output tokens)."""

    model: str
    input_per_million: float = 0.0
    output_per_million: float = 0.0


@dataclass(frozen=True, slots=True)
class RouteQuery:
    """Everything a decision depends on besides the profile snapshot."""

    category: str
    pool: tuple[PoolModel, ...]
    k: int
    seed: int
    budget_usd: float | None = None
    prompt_tokens: int = 0
    output_tokens: int | None = None
    resting: frozenset[str] = frozenset()  # breaker open
    probes: frozenset[str] = frozenset()  # breaker half-open: one of them is seated


@dataclass(frozen=True, slots=True)
class Route:
    """The seats (a model per seat, in order) and the decision as panel.selected records it."""

    seats: tuple[str, ...]
    decision: RouterDecision
    probe: str | None = None


class RouteInfeasible(ValueError):
    """No panel satisfies the query; ``field`` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class ModelView:
    """A model's posterior in one category, derived from a snapshot (cached per snapshot)."""

    alpha: float
    beta: float
    availability: float
    mean_cost_usd: float | None
    mean_output_tokens: float | None

    @property
    def accuracy(self) -> float:
        """Posterior mean of answering right."""
        return self.alpha / (self.alpha + self.beta)


def model_view(
    snapshot: ProfileSnapshot, model: str, category: str, s: RouterSettings = DEFAULT_SETTINGS
) -> ModelView:
    """Posterior quality, availability and mean cost of ``model`` in ``category``."""
    views = _cache(snapshot, "views", category, s)
    view = views.get(model)
    if isinstance(view, ModelView):
        return view
    cell = snapshot.cell(model, category)
    overall = snapshot.model_overall(model)
    rest = overall - cell
    prior_right = rest.right + s.judge_weight * rest.agree
    prior_n = prior_right + rest.wrong + s.judge_weight * rest.disagree
    prior_mean = (prior_right + 1.0) / (prior_n + 2.0)
    alpha = s.prior_strength * prior_mean + cell.right + s.judge_weight * cell.agree
    beta = s.prior_strength * (1.0 - prior_mean) + cell.wrong + s.judge_weight * cell.disagree
    failure = (overall.failures + s.failure_prior * s.failure_strength) / (
        overall.calls + s.failure_strength
    )
    cost = cell.mean_cost_usd
    tokens = cell.mean_output_tokens if cell.output_tokens else None
    view = ModelView(
        alpha,
        beta,
        1.0 - failure,
        cost if cost is not None else overall.mean_cost_usd,
        tokens
        if tokens is not None
        else (overall.mean_output_tokens if overall.output_tokens else None),
    )
    views[model] = view
    return view


def _cache(
    snapshot: ProfileSnapshot, kind: str, category: str, s: RouterSettings
) -> dict[Any, Any]:
    """Per-snapshot memo of derived values, one dict per (kind, category, settings)."""
    key = (kind, category, s)
    found = snapshot.cache.get(key)
    if found is None:
        found = snapshot.cache[key] = {}
    assert isinstance(found, dict)
    return found


def price_estimate(candidate: PoolModel, prompt_tokens: float, output_tokens: float) -> float:
    """Cost of one call from list prices and token counts."""
    return (
        prompt_tokens * candidate.input_per_million + output_tokens * candidate.output_per_million
    ) / 1_000_000


def prompt_tokens(messages: Sequence[Message]) -> int:
    """Rough prompt size: four characters a token, plus a few per message."""
    return sum(math.ceil(len(m.content) / 4) + 3 for m in messages)


def expected_costs(
    snapshot: ProfileSnapshot,
    pool: Sequence[PoolModel],
    category: str,
    prompt_tokens: int,
    output_tokens: int | None = None,
    s: RouterSettings = DEFAULT_SETTINGS,
) -> dict[str, float]:
    """Expected cost of one call of each candidate on this prompt.

    List prices times this prompt's tokens and the completion tokens the model's
    profile says it writes in the category (else overall); without token counts, its
    mean cost per call. An untried model is priced with the completion tokens the other
    candidates write (their median) or, when only costs are known, with list prices
    scaled by how far they were from the observed costs, so that it is neither ruled
    out nor favoured by a guess. ``output_tokens`` (the request's max_tokens) caps all.
    """
    views = [model_view(snapshot, c.model, category, s) for c in pool]
    cap = float(output_tokens) if output_tokens else math.inf
    written = [v.mean_output_tokens for v in views if v.mean_output_tokens is not None]
    guess = min(statistics.median(written) if written else float(s.default_output_tokens), cap)
    costs: dict[str, float] = {}
    ratios = []
    for c, view in zip(pool, views, strict=True):
        if view.mean_output_tokens is not None:
            costs[c.model] = price_estimate(c, prompt_tokens, min(view.mean_output_tokens, cap))
        elif view.mean_cost_usd is not None:
            costs[c.model] = view.mean_cost_usd
            listed = price_estimate(c, prompt_tokens, guess)
            if listed > 0:
                ratios.append(view.mean_cost_usd / listed)
    scale = 1.0 if written or not ratios else statistics.median(ratios)
    for c in pool:
        if c.model not in costs:
            costs[c.model] = scale * price_estimate(c, prompt_tokens, guess)
    return costs


def error_covariance(
    snapshot: ProfileSnapshot,
    category: str,
    a: str,
    b: str,
    s: RouterSettings = DEFAULT_SETTINGS,
) -> float:
    """How much more often a and b are both wrong than independent models would be:
    P(both wrong) - P(a wrong) P(b wrong), with P(both wrong) shrunk towards its prior."""
    memo = _cache(snapshot, "cov", category, s)
    key = (a, b) if a <= b else (b, a)
    cached = memo.get(key)
    if cached is not None:
        assert isinstance(cached, float)
        return cached
    err_a = 1.0 - model_view(snapshot, a, category, s).accuracy
    err_b = 1.0 - model_view(snapshot, b, category, s).accuracy
    independent = err_a * err_b
    prior = err_a * max(err_b, s.self_repeat) if a == b else independent
    pair = snapshot.pair(category, a, b)
    n = pair.both_wrong + pair.one_wrong + pair.both_right
    both_wrong = (pair.both_wrong + s.cofailure_strength * prior) / (n + s.cofailure_strength)
    covariance = max(0.0, both_wrong - independent)
    memo[key] = covariance
    return covariance


def route(
    snapshot: ProfileSnapshot, query: RouteQuery, s: RouterSettings = DEFAULT_SETTINGS
) -> Route:
    """Pick the panel; raises RouteInfeasible when k or the budget cannot be met."""
    pool = _distinct(query.pool)
    if query.k < 1:
        raise RouteInfeasible("k", "must be at least 1")
    if query.k > len(pool):
        raise RouteInfeasible("k", f"{query.k} exceeds the pool of {len(pool)} candidate models")
    rng = random.Random(query.seed)
    scores: dict[str, float] = {}
    views = _cache(snapshot, "views", query.category, s)
    for c in pool:  # one draw per candidate in pool order, whatever the breaker says
        view = views.get(c.model) or model_view(snapshot, c.model, query.category, s)
        scores[c.model] = round(rng.betavariate(view.alpha, view.beta) * view.availability, 6)
    costs = expected_costs(
        snapshot, pool, query.category, query.prompt_tokens, query.output_tokens, s
    )
    names = [c.model for c in pool]
    closed = [m for m in names if m not in query.resting and m not in query.probes]
    all_resting = not closed
    usable = closed or names  # every model rests: a panel of resting models beats no answer
    cheapest = min(costs[m] for m in usable)
    budget = query.budget_usd
    if budget is not None and not _fits(0.0, cheapest, query.k - 1, cheapest, budget):
        raise RouteInfeasible(
            "max_cost_usd",
            f"{budget:.6g} USD cannot pay for {query.k} seats: the cheapest panel "
            f"({query.k} x {min(usable, key=costs.__getitem__)}) is expected to cost "
            f"{query.k * cheapest:.6g} USD",
        )
    seats: list[str] = []
    spent = 0.0
    probe = None
    for m in names:  # even when every model rests: else no breaker would ever close again
        if m in query.probes and _fits(spent, costs[m], query.k - 1, cheapest, budget):
            probe, spent = m, spent + costs[m]
            seats.append(m)
            break
    over_budget: set[str] = set()
    penalty = dict.fromkeys(usable, 0.0)
    for p in seats:
        _add_penalty(penalty, snapshot, query.category, p, s)
    while len(seats) < query.k:
        left = query.k - len(seats) - 1
        best, best_value, top, top_value = "", -math.inf, "", -math.inf
        for m in usable:
            value = scores[m] - penalty[m]
            if value > top_value:
                top, top_value = m, value
            if value > best_value and _fits(spent, costs[m], left, cheapest, budget):
                best, best_value = m, value
        if not best:  # only float rounding can get here: the cheapest seat always fits
            best = min(usable, key=costs.__getitem__)
        if top != best:
            over_budget.add(top)
        seats.append(best)
        spent += costs[best]
        if len(seats) < query.k:
            _add_penalty(penalty, snapshot, query.category, best, s)
    lowest_chosen = min((scores[m] for m in seats if m != probe), default=math.inf)
    candidates = [
        CandidateScore(
            model=m,
            score=scores[m],
            chosen=m in seats,
            reason=_reason(
                m, seats, probe, query, over_budget, scores[m] > lowest_chosen, all_resting
            ),
            expected_cost_usd=costs[m],
        )
        for m in names
    ]
    decision = RouterDecision(
        version=ROUTER_VERSION,
        profile_checkpoint=snapshot.checkpoint,
        seed=query.seed,
        k=query.k,
        candidates=candidates,
        budget_usd=budget,
    )
    return Route(tuple(seats), decision, probe)


def member_weights(
    snapshot: ProfileSnapshot,
    category: str,
    members: Iterable[tuple[str, str]],
    s: RouterSettings = DEFAULT_SETTINGS,
) -> dict[str, float]:
    """Posterior accuracy in the category of each (member_id, model): judge weights."""
    return {
        member_id: round(model_view(snapshot, model, category, s).accuracy, 4)
        for member_id, model in members
    }


def _add_penalty(
    penalty: dict[str, float], snapshot: ProfileSnapshot, category: str, seat: str,
    s: RouterSettings,
) -> None:  # fmt: skip
    """A seat was taken: every candidate now pays for the errors it shares with it."""
    weight = s.cofailure_weight
    memo = _cache(snapshot, "cov", category, s)
    for m in penalty:
        cov = memo.get((m, seat) if m <= seat else (seat, m))
        if cov is None:
            cov = error_covariance(snapshot, category, m, seat, s)
        penalty[m] += weight * cov


def _distinct(pool: Iterable[PoolModel]) -> list[PoolModel]:
    seen: dict[str, PoolModel] = {}
    for c in pool:
        seen.setdefault(c.model, c)
    return list(seen.values())


def _fits(spent: float, cost: float, left: int, cheapest: float, budget: float | None) -> bool:
    """Whether a seat of this cost leaves enough budget for ``left`` cheapest seats."""
    if budget is None:
        return True
    return spent + cost + left * cheapest <= budget * (1.0 - _SLACK)


def _reason(
    model: str,
    seats: list[str],
    probe: str | None,
    query: RouteQuery,
    over_budget: set[str],
    beat_a_chosen: bool,
    all_resting: bool,
) -> str:
    # Every seat says when no model was closed, the probe's too (a panel of one): route
    # explain reads the breaker's view back from these reasons.
    marker = " (every candidate resting)" if all_resting else ""
    taken = seats.count(model)
    if model == probe:
        return "probe: breaker half-open" + marker
    if taken:
        reason = "top score" if taken == 1 else f"top score ({taken} seats: self-fusion)"
        return reason + marker
    if model in query.resting and not all_resting:
        return "resting: breaker open"
    if model in query.probes and not all_resting:
        return "resting: another model is being probed"
    if model in over_budget:
        return "over budget"
    if beat_a_chosen:
        return "co-failure penalty"
    return "lower score"
