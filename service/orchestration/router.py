"""The Router: panels for `panel: "auto"` from in-memory profile snapshots.

Never a database query per request: the snapshots are replaced as the profiles advance
(``follow_log``). Profiles are per tenant: a decision and a judge's member weights read
the asking run's tenant's snapshot only (``TenantProfiles``), so one tenant's runs and
outcomes neither show in another's answers nor move its routing. Each snapshot carries
the log checkpoint at which its tenant's counts last changed, which goes into
panel.selected with the seed, so ``route explain`` can rebuild the same inputs.

The breakers are shared by every tenant: they are the providers' health (one provider
account serves them all). They are fed twice: by this process's own member calls as
they end (``record_call``; reacts within a few runs) and by the calls other processes
made, as newer snapshots show them (``install``); not by the lifetime counts it starts
from. They live in this process, so replicas do not share them: another replica's
calls count here only for a model this process did not call since the last snapshot,
only when one snapshot brings at least ``min_calls`` of them, and only to open a
breaker (never to close it or to start a probe). Two replicas can therefore show the
same model resting for different cool-downs, or one resting and one not.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import structlog

from service.config import Config, PresetConfig, UnknownModel
from service.domain.breaker import (
    Breaker,
    BreakerSettings,
    BreakerState,
    record_call,
    record_calls,
    start_probe,
)
from service.domain.events import JudgeSpec, Message, OutcomeRecorded, PanelRequest
from service.domain.profiles import (
    DEFAULT_TENANT,
    EMPTY_CELL,
    START_CHECKPOINT,
    CellStats,
    ProfileFold,
    ProfileSnapshot,
    TenantProfiles,
)
from service.domain.routing import (
    DEFAULT_SETTINGS,
    PoolModel,
    Route,
    RouteInfeasible,
    RouteQuery,
    RouterSettings,
    member_weights,
    price_estimate,
    prompt_tokens,
    route,
)
from service.orchestration.plan import FusionPlan, RouteRequest, stable_seed
from service.orchestration.profile_loader import load_profiles
from service.store import Checkpoint, EventStore, RecordedEvent
from service.store.codec import decode_event
from service.store.database import DATABASE_ERRORS, keep_running
from service.store.postgres import START, checkpoint_of

log = structlog.get_logger("router")


def router_seed(run_id: uuid.UUID | str) -> int:
    """The Thompson-sampling seed of a run: derived from its id, so explain can redo it."""
    return stable_seed(str(run_id), "router")


def route_request(
    config: Config,
    preset: PresetConfig,
    judge: JudgeSpec,
    *,
    k: int | None = None,
    pool: Sequence[str] | None = None,
    budget_usd: float | None = None,
) -> RouteRequest:
    """Validate an automatic panel against the configuration; raises RouteInfeasible.

    The pool is the preset's router candidates (every configured model when it names
    none), without the judge's model unless the preset or judge allows it.
    """
    names = list(pool) if pool is not None else list(preset.router.candidates or config.models)
    for index, name in enumerate(names):
        try:
            config.model(name)
        except UnknownModel:
            raise RouteInfeasible(f"pool[{index}]", f"unknown model {name!r}") from None
    if (
        pool is None
        and judge.model is not None
        and not (preset.allow_panel_judge or judge.allow_panel_model)
    ):
        names = [n for n in names if n != judge.model]
    distinct = tuple(dict.fromkeys(names))
    seats = k if k is not None else preset.router.k
    if not distinct:
        raise RouteInfeasible("pool", "no candidate models")
    if seats < 1 or seats > len(distinct):
        raise RouteInfeasible(
            "k", f"{seats} seats cannot be filled from a pool of {len(distinct)} models"
        )
    budget = budget_usd if budget_usd is not None else preset.router.max_cost_usd
    return RouteRequest(k=seats, pool=distinct, budget_usd=budget)


def pool_models(config: Config, names: Iterable[str]) -> tuple[PoolModel, ...]:
    """Pool candidates with their configured prices."""
    found = []
    for name in names:
        price = config.model(name).price
        found.append(PoolModel(name, price.input_per_million, price.output_per_million))
    return tuple(found)


def check_affordable(config: Config, request: RouteRequest, messages: Sequence[Message]) -> None:
    """Before anything is written: refuse a budget that could never pay for k seats,
    not even the prompt's input tokens on the cheapest model. The router decides with
    the profiles' costs when the run starts."""
    if request.budget_usd is None:
        return
    tokens = prompt_tokens(messages)
    floor = {c.model: price_estimate(c, tokens, 0) for c in pool_models(config, request.pool)}
    cheapest = min(floor, key=floor.__getitem__)
    if request.k * floor[cheapest] > request.budget_usd:
        raise RouteInfeasible(
            "max_cost_usd",
            f"{request.budget_usd:.6g} USD cannot pay for {request.k} seats: the prompt "
            f"alone costs at least {floor[cheapest]:.6g} USD a seat on the cheapest model "
            f"({cheapest})",
        )


def seats_to_panel(seats: Iterable[str]) -> list[PanelRequest]:
    """Seats as panel requests: a model's seats become its samples (self-fusion)."""
    counts: dict[str, int] = {}
    for model in seats:
        counts[model] = counts.get(model, 0) + 1
    return [PanelRequest(model=m, samples=n) for m, n in counts.items()]


@dataclass(frozen=True, slots=True)
class BreakerView:
    """A model's breaker as the route endpoint shows it."""

    state: BreakerState
    recent_failure_rate: float
    cooldown_s: float


class Router:
    """Decides panels; holds every tenant's current snapshot and the breakers (one
    router per process)."""

    def __init__(
        self,
        config: Config,
        *,
        settings: RouterSettings = DEFAULT_SETTINGS,
        breaker: BreakerSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        profiles: TenantProfiles | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.breaker_settings = breaker or BreakerSettings()
        self.clock = clock
        self._profiles = profiles or TenantProfiles()
        self._breakers: dict[str, Breaker] = {}
        self._called: set[str] = set()
        self._pools: dict[tuple[str, ...], tuple[PoolModel, ...]] = {}

    @property
    def profiles(self) -> TenantProfiles:
        """Every tenant's profiles, and the log checkpoint they were folded up to."""
        return self._profiles

    def snapshot(self, tenant: str) -> ProfileSnapshot:
        """The profiles the tenant's next decision reads."""
        return self._profiles.of(tenant)

    def install(self, profiles: TenantProfiles, *, history: bool = False) -> None:
        """Use newer profiles; calls they show for models this process did not call
        since the last ones (other replicas' calls, any tenant's) may open their breakers.

        ``history``: the profiles are where they start (the read models at start), and
        their counts are every call ever made: they feed no breaker, which is about
        recent calls; the next profiles' news is counted against them."""
        now = self.clock()
        seen = {} if history else self._calls_since(self._profiles, profiles)
        for model, cell in seen.items():
            if model not in self._called and cell.calls > 0:
                breaker = self._breakers.get(model, Breaker())
                self._breakers[model] = record_calls(
                    breaker, cell.calls, cell.failures, now, self.breaker_settings
                )
        self._called.clear()
        self._profiles = profiles

    @staticmethod
    def _calls_since(previous: TenantProfiles, profiles: TenantProfiles) -> dict[str, CellStats]:
        """Per model, what ``profiles`` count beyond ``previous``, over every tenant."""
        seen: dict[str, CellStats] = {}
        for tenant, snapshot in profiles.tenants.items():
            before = previous.of(tenant)
            if snapshot is before:  # a tenant with nothing new keeps its snapshot
                continue
            for model, cell in snapshot.overall.items():
                seen[model] = seen.get(model, EMPTY_CELL) + (cell - before.model_overall(model))
        return seen

    def record_call(self, model: str, failed: bool) -> None:
        """A panel call of this process ended: feed the model's breaker."""
        self._called.add(model)
        breaker = self._breakers.get(model, Breaker())
        updated = record_call(breaker, failed, self.clock(), self.breaker_settings)
        if updated.opened_at is not None and breaker.opened_at != updated.opened_at:
            log.warning("router.breaker_opened", model=model, cooldown_s=updated.cooldown_s)
        self._breakers[model] = updated

    def breakers(self, models: Iterable[str]) -> dict[str, BreakerView]:
        """The breaker of each model, now."""
        now = self.clock()
        views = {}
        for model in models:
            b = self._breakers.get(model, Breaker())
            views[model] = BreakerView(b.state(now), b.failure_rate(), b.cooldown_s)
        return views

    def decide(
        self,
        category: str,
        request: RouteRequest,
        seed: int,
        *,
        tenant: str,
        messages: Sequence[Message] = (),
        output_tokens: int | None = None,
        dry_run: bool = False,
    ) -> Route:
        """Pick a panel now on the tenant's profiles; a dry run starts no probe.
        Raises RouteInfeasible."""
        now = self.clock()
        pool = self._pools.get(request.pool)
        if pool is None:  # the configuration never changes: prices are looked up once
            pool = self._pools[request.pool] = pool_models(self.config, request.pool)
        states = {m: b.state(now) for m, b in self._breakers.items() if b.opened_at is not None}
        query = RouteQuery(
            category=category,
            pool=pool,
            k=request.k,
            seed=seed,
            budget_usd=request.budget_usd,
            prompt_tokens=prompt_tokens(messages),
            output_tokens=output_tokens,
            resting=frozenset(m for m, s in states.items() if s == "open"),
            probes=frozenset(m for m, s in states.items() if s == "half_open"),
        )
        decided = route(self._profiles.of(tenant), query, self.settings)
        if decided.probe is not None and not dry_run:
            self._breakers[decided.probe] = start_probe(self._breakers[decided.probe], now)
        return decided

    def route_plan(self, plan: FusionPlan, run_id: uuid.UUID) -> FusionPlan:
        """The plan with its automatic panel picked on its tenant's profiles; raises
        RouteInfeasible."""
        assert plan.route is not None
        decided = self.decide(
            plan.category,
            plan.route,
            router_seed(run_id),
            tenant=plan.client.tenant,
            messages=plan.messages,
            output_tokens=plan.params.max_tokens,
        )
        return replace(plan, panel=seats_to_panel(decided.seats), router_decision=decided.decision)

    def member_weights(
        self, category: str, members: Iterable[tuple[str, str]], *, tenant: str
    ) -> dict[str, float]:
        """Each (member_id, model)'s posterior accuracy in the category on the tenant's
        profiles: judge weights."""
        return member_weights(self._profiles.of(tenant), category, members, self.settings)


INSTALL_EVERY_BATCHES = 20
PROFILE_EVENT_TYPES = frozenset(
    {
        "run.requested",
        "panel.selected",
        "panel.call.succeeded",
        "panel.call.failed",
        "judge.decided",
        "outcome.recorded",
    }
)


# The router reads the log at most ~4 times a second under load: woken by every
# append, it read the log 230 times a second at 100 fusions/s; settling cut the
# service's CPU per fusion from 5.3 to 4.5 ms. Profiles a quarter second older
# route as well.
FOLLOW_SETTLE_S = 0.25


# A run's context for the fold: its request (with its tenant, as the projections read
# it) and its panel, versions 1 and 2 of a run stream (FusionRunner writes both in its
# first append; a run it could not route has no panel, and its version 2 is run.failed).
RUN_CONTEXT_SQL = """
SELECT stream_id, event_type, schema_version, data,
       coalesce(metadata->>'tenant', 'default') AS tenant
FROM events
WHERE stream_id = ANY($1::text[]) AND stream_version <= 2
  AND event_type IN ('run.requested', 'panel.selected')
ORDER BY stream_id, stream_version
"""


# Each run's latest outcome before the given versions (what its next one replaces).
PRIOR_OUTCOME_SQL = """
SELECT DISTINCT ON (p.stream_id) p.stream_id, p.schema_version, p.data
FROM unnest($1::text[], $2::int[]) AS b(stream_id, version)
JOIN events p ON p.stream_id = b.stream_id AND p.stream_version < b.version
WHERE p.event_type = 'outcome.recorded'
ORDER BY p.stream_id, p.stream_version DESC
"""


def run_tenant(requested: RecordedEvent) -> str:
    """A run's tenant: its run.requested's metadata tenant ('default' when absent)."""
    tenant = requested.metadata_dict().get("tenant")
    return tenant if isinstance(tenant, str) else DEFAULT_TENANT


def fold_profiles(fold: ProfileFold, batch: Iterable[RecordedEvent]) -> None:
    """Count the events of a batch that profiles are made of (run streams only), each
    for its run's tenant; then the fold lets go of its oldest runs beyond its bound."""
    for recorded in batch:
        if recorded.stream_id.startswith("run-") and recorded.event_type in PROFILE_EVENT_TYPES:
            if recorded.event_type == "run.requested":
                fold.apply(recorded.stream_id, recorded.decode(), run_tenant(recorded))
            else:
                fold.apply(recorded.stream_id, recorded.decode())
    fold.trim()


async def fold_batch(store: EventStore, fold: ProfileFold, batch: Sequence[RecordedEvent]) -> None:
    """fold_profiles, first reading the context of runs the fold no longer holds (an
    outcome recorded long after its run), and the earlier outcome such a run's new one
    replaces: a query or two per batch, usually none."""
    opened: set[str] = set()
    missing: set[str] = set()
    outcomes: dict[str, int] = {}  # run -> the version of its first outcome in the batch
    for recorded in batch:
        stream_id = recorded.stream_id
        if not stream_id.startswith("run-") or recorded.event_type not in PROFILE_EVENT_TYPES:
            continue
        if recorded.event_type == "run.requested":
            opened.add(stream_id)
        elif stream_id not in opened and not fold.holds(stream_id):
            missing.add(stream_id)
        if recorded.event_type == "outcome.recorded":
            outcomes.setdefault(stream_id, recorded.stream_version)
    if missing:
        for row in await store.pool.fetch(RUN_CONTEXT_SQL, sorted(missing)):
            event = decode_event(row["event_type"], row["schema_version"], row["data"])
            fold.load_context(row["stream_id"], event, row["tenant"])
    unknown = sorted(s for s in outcomes if fold.needs_prior(s))
    if unknown:
        versions = [outcomes[s] for s in unknown]
        for row in await store.pool.fetch(PRIOR_OUTCOME_SQL, unknown, versions):
            prior = decode_event("outcome.recorded", row["schema_version"], row["data"])
            assert isinstance(prior, OutcomeRecorded)
            fold.recall_outcome(row["stream_id"], prior)
        for stream_id in unknown:
            fold.no_prior(stream_id)  # those without one (a no-op for the others)
    fold_profiles(fold, batch)


async def _read_model_start(store: EventStore) -> TenantProfiles | None:
    """The profile read models' counts, if their projection has a checkpoint (and the
    database answers; otherwise the follower starts from the log's start)."""
    try:
        async with store.pool.acquire() as conn:
            profiles = await load_profiles(conn)
    except DATABASE_ERRORS as exc:
        log.warning("router.read_models_unavailable", error=str(exc))
        return None
    return None if profiles.checkpoint == START_CHECKPOINT else profiles


async def follow_log(
    router: Router,
    store: EventStore,
    *,
    batch_size: int = 1000,
    poll_interval: float = 1.0,
    settle_s: float = FOLLOW_SETTLE_S,
    from_read_models: bool = True,
) -> None:
    """Keep the router's profiles current: fold new events in log order (forever).

    An in-memory projection with the read models' maths (``ProfileFold``), per tenant;
    the profiles are installed when the fold has caught up, and every few batches while
    it catches up (only the tenants counted since are frozen again). It starts from the
    profile read models' counts and checkpoint when the projection has one
    (``from_read_models``: folding a million events from the start costs ~15 s of CPU
    at every start), else from the log's start. A database error is logged and the
    reading resumes from the last checkpoint.
    """
    fold = ProfileFold()
    checkpoint = START
    batches = 0
    if from_read_models and (start := await _read_model_start(store)) is not None:
        fold = ProfileFold(start=start)
        checkpoint = Checkpoint.parse(start.checkpoint)
        router.install(start, history=True)

    async def follow() -> None:
        nonlocal checkpoint, batches
        async for batch in store.subscribe(
            checkpoint, batch_size=batch_size, poll_interval=poll_interval, settle_s=settle_s
        ):
            await fold_batch(store, fold, batch)
            checkpoint = checkpoint_of(batch[-1])
            batches += 1
            if len(batch) < batch_size or batches % INSTALL_EVERY_BATCHES == 0:
                router.install(fold.profiles(str(checkpoint)))
                await asyncio.sleep(0)

    await keep_running(
        store.pool,
        follow,
        pause_s=poll_interval,
        failure="router.profiles_unavailable",
        retry_on=DATABASE_ERRORS,
    )
