"""Reproduce a recorded router decision from the log: `fusion-ledger route explain`.

panel.selected holds the decision's inputs that are not in the log itself: the
profile checkpoint, the seed, k, the budget, the pool (the candidates, in order) and
the breaker's view (in each candidate's reason). The run's tenant's profiles at the
checkpoint are rebuilt by folding the log up to it with the read models' maths (the
router decided on that tenant's profiles only); the decision is then made again and
compared, candidate by candidate, with the recorded one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.config import Config, UnknownModel
from service.domain.events import PanelSelected, RouterDecision, RunRequested
from service.domain.profiles import ProfileFold, ProfileSnapshot
from service.domain.routing import (
    DEFAULT_SETTINGS,
    ROUTER_VERSION,
    PoolModel,
    RouteQuery,
    RouterSettings,
    prompt_tokens,
    route,
)
from service.orchestration.router import fold_batch, run_tenant, seats_to_panel
from service.store import Checkpoint, EventStore
from service.store.postgres import START, checkpoint_of

RESTING = "resting: breaker open"
PROBED = ("probe: breaker half-open", "resting: another model is being probed")
ALL_RESTING = "(every candidate resting)"
SCORE_TOLERANCE = 1e-9


class NotRouted(LookupError):
    """The run does not exist, or its panel was not chosen by the router."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """A recorded decision next to the same decision made again."""

    run_id: str
    tenant: str
    category: str
    category_source: str
    category_rule: str | None
    seats: list[str]  # as recorded in panel.selected, one model per seat
    recorded: RouterDecision
    reproduced: RouterDecision
    reproduced_seats: list[str]
    differences: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """True when the decision was reproduced exactly."""
        return not self.differences


async def snapshot_at(store: EventStore, checkpoint: Checkpoint, tenant: str) -> ProfileSnapshot:
    """A tenant's profiles as of a checkpoint, rebuilt from the log (gap-safe order)."""
    fold = ProfileFold()
    after = START
    while after < checkpoint:
        batch = [e for e in await store.read_all(after, 1000) if checkpoint_of(e) <= checkpoint]
        if not batch:
            break
        await fold_batch(store, fold, batch)
        after = checkpoint_of(batch[-1])
    return fold.builder(tenant).snapshot(str(checkpoint))


async def explain_run(
    store: EventStore, config: Config, run_id: str, settings: RouterSettings = DEFAULT_SETTINGS
) -> Explanation:
    """Redo run ``run_id``'s router decision and compare; raises NotRouted."""
    records = await store.read_stream(f"run-{run_id}")
    events = [e.decode() for e in records]
    requested = next((e for e in events if isinstance(e, RunRequested)), None)
    selected = next((e for e in events if isinstance(e, PanelSelected)), None)
    if requested is None:
        raise NotRouted(f"no run {run_id}")
    if selected is None or selected.router is None:
        method = selected.method if selected is not None else "none yet"
        raise NotRouted(f"run {run_id}'s panel was not chosen by the router (method: {method})")
    recorded = selected.router
    differences: list[str] = []
    if recorded.version != ROUTER_VERSION:
        differences.append(f"recorded by {recorded.version}; this is {ROUTER_VERSION}")
    tenant = next(run_tenant(r) for r in records if r.event_type == "run.requested")
    snapshot = await snapshot_at(store, Checkpoint.parse(recorded.profile_checkpoint), tenant)
    query = RouteQuery(
        category=requested.category,
        pool=_pool(config, recorded, differences),
        k=recorded.k,
        seed=recorded.seed,
        budget_usd=recorded.budget_usd,
        prompt_tokens=prompt_tokens(requested.messages),
        output_tokens=requested.params.max_tokens,
        resting=frozenset(_resting(recorded)),
        probes=frozenset(c.model for c in recorded.candidates if _probed(c.reason)),
    )
    again = route(snapshot, query, settings)
    seats = [m.model for m in selected.members]
    again_seats = [p.model for p in seats_to_panel(again.seats) for _ in range(p.samples)]
    if seats != again_seats:
        differences.append(f"seats: recorded {seats}, reproduced {again_seats}")
    differences += _compare(recorded, again.decision)
    return Explanation(
        run_id=run_id,
        tenant=tenant,
        category=requested.category,
        category_source=requested.category_source,
        category_rule=requested.category_rule,
        seats=seats,
        recorded=recorded,
        reproduced=again.decision,
        reproduced_seats=again_seats,
        differences=differences,
    )


def _pool(
    config: Config, recorded: RouterDecision, differences: list[str]
) -> tuple[PoolModel, ...]:
    pool = []
    for c in recorded.candidates:
        try:
            price = config.model(c.model).price
        except UnknownModel:
            differences.append(f"{c.model} is not configured now: its list prices are unknown")
            pool.append(PoolModel(c.model))
            continue
        pool.append(PoolModel(c.model, price.input_per_million, price.output_per_million))
    return tuple(pool)


def _resting(recorded: RouterDecision) -> set[str]:
    if any(ALL_RESTING in c.reason for c in recorded.candidates):
        return {c.model for c in recorded.candidates}
    return {c.model for c in recorded.candidates if c.reason == RESTING}


def _probed(reason: str) -> bool:
    # a probe seated while no model was closed carries the every-resting marker too
    return reason.removesuffix(f" {ALL_RESTING}") in PROBED


def _compare(recorded: RouterDecision, again: RouterDecision) -> list[str]:
    found = []
    if recorded.profile_checkpoint != again.profile_checkpoint or recorded.seed != again.seed:
        found.append("checkpoint or seed differ")
    for old, new in zip(recorded.candidates, again.candidates, strict=True):
        if abs(old.score - new.score) > SCORE_TOLERANCE:
            found.append(f"{old.model}: score {old.score} recorded, {new.score} reproduced")
        if (old.chosen, old.reason) != (new.chosen, new.reason):
            found.append(f"{old.model}: {old.reason!r} recorded, {new.reason!r} reproduced")
        old_cost, new_cost = old.expected_cost_usd or 0.0, new.expected_cost_usd or 0.0
        if abs(old_cost - new_cost) > SCORE_TOLERANCE * max(abs(old_cost), abs(new_cost)):
            found.append(f"{old.model}: expected cost {old_cost} recorded, {new_cost} reproduced")
    return found
