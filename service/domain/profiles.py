"""Model error profiles as counts: what the router reads, and the maths that builds them.

A ``ProfileSnapshot`` is an immutable view of one tenant's profile read models at one
log checkpoint: per (model, category) ground-truth right / wrong, judge agreement,
calls, failures, cost and latency; per (category, model pair) how often two panel
members were wrong together. Profiles are kept per tenant (a run's tenant is its
request's): ``TenantProfiles`` holds every tenant's snapshot, and a tenant with no
history reads the empty one (the prior). ``ProfileBuilder`` is the counting itself (one
method per kind of fact), and ``ProfileFold`` applies it to run events in log order, so
a snapshot can be rebuilt from the log up to any checkpoint (``route explain``) and a
benchmark can update one after each prompt with the read models' maths.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from service.domain.events import (
    Event,
    JudgeDecided,
    OutcomeRecorded,
    PanelCallFailed,
    PanelCallSucceeded,
    PanelSelected,
    RunRequested,
)

START_CHECKPOINT = "0:0"
DEFAULT_TENANT = "default"  # a run whose request names no tenant (as the projections read it)


@dataclass(frozen=True, slots=True)
class CellStats:
    """One model in one category (or overall): the counts of a model error profile."""

    right: float = 0.0  # ground truth: the member's answer was right
    wrong: float = 0.0
    agree: float = 0.0  # the judge agreed with the member
    disagree: float = 0.0
    calls: int = 0
    failures: int = 0
    cost_usd: float = 0.0  # summed over successful calls
    latency_ms: float = 0.0  # summed over all calls
    output_tokens: float = 0.0  # summed over successful calls

    def __add__(self, other: CellStats) -> CellStats:
        return CellStats(
            self.right + other.right,
            self.wrong + other.wrong,
            self.agree + other.agree,
            self.disagree + other.disagree,
            self.calls + other.calls,
            self.failures + other.failures,
            self.cost_usd + other.cost_usd,
            self.latency_ms + other.latency_ms,
            self.output_tokens + other.output_tokens,
        )

    def __sub__(self, other: CellStats) -> CellStats:
        return CellStats(
            self.right - other.right,
            self.wrong - other.wrong,
            self.agree - other.agree,
            self.disagree - other.disagree,
            self.calls - other.calls,
            self.failures - other.failures,
            self.cost_usd - other.cost_usd,
            self.latency_ms - other.latency_ms,
            self.output_tokens - other.output_tokens,
        )

    @property
    def mean_cost_usd(self) -> float | None:
        """Mean cost of a successful call, None without one."""
        successes = self.calls - self.failures
        return self.cost_usd / successes if successes > 0 else None

    @property
    def mean_output_tokens(self) -> float | None:
        """Mean completion tokens of a successful call, None without one."""
        successes = self.calls - self.failures
        return self.output_tokens / successes if successes > 0 else None


@dataclass(frozen=True, slots=True)
class PairStats:
    """Two panel seats graded against ground truth on the same runs."""

    both_wrong: float = 0.0
    one_wrong: float = 0.0
    both_right: float = 0.0

    def __add__(self, other: PairStats) -> PairStats:
        return PairStats(
            self.both_wrong + other.both_wrong,
            self.one_wrong + other.one_wrong,
            self.both_right + other.both_right,
        )


EMPTY_CELL = CellStats()
EMPTY_PAIR = PairStats()


def pair_key(category: str, a: str, b: str) -> tuple[str, str, str]:
    """The key of a pair: category and the two models in sorted order."""
    return (category, a, b) if a <= b else (category, b, a)


@dataclass(frozen=True)
class ProfileSnapshot:
    """The profiles as of ``checkpoint`` ('transaction_id:global_position' of the log)."""

    checkpoint: str = START_CHECKPOINT
    cells: Mapping[tuple[str, str], CellStats] = field(default_factory=dict)
    pairs: Mapping[tuple[str, str, str], PairStats] = field(default_factory=dict)
    # Derived once per snapshot: overall per model and per pair, and per-category caches
    # the router fills (snapshots never change, so caching is safe).
    overall: dict[str, CellStats] = field(init=False, repr=False, compare=False)
    overall_pairs: dict[tuple[str, str], PairStats] = field(init=False, repr=False, compare=False)
    cache: dict[object, object] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        overall: dict[str, CellStats] = {}
        for (model, _), cell in self.cells.items():
            overall[model] = overall.get(model, EMPTY_CELL) + cell
        pairs: dict[tuple[str, str], PairStats] = {}
        for (_, a, b), pair in self.pairs.items():
            pairs[(a, b)] = pairs.get((a, b), EMPTY_PAIR) + pair
        object.__setattr__(self, "overall", overall)
        object.__setattr__(self, "overall_pairs", pairs)
        object.__setattr__(self, "cache", {})

    def cell(self, model: str, category: str) -> CellStats:
        """The model's counts in the category (zero when it has none)."""
        return self.cells.get((model, category), EMPTY_CELL)

    def model_overall(self, model: str) -> CellStats:
        """The model's counts over every category."""
        return self.overall.get(model, EMPTY_CELL)

    def pair(self, category: str, a: str, b: str) -> PairStats:
        """Two models' joint counts in the category (zero when none)."""
        return self.pairs.get(pair_key(category, a, b), EMPTY_PAIR)

    def pair_overall(self, a: str, b: str) -> PairStats:
        """Two models' joint counts over every category."""
        return self.overall_pairs.get((a, b) if a <= b else (b, a), EMPTY_PAIR)


@dataclass(frozen=True)
class TenantProfiles:
    """Every tenant's profiles, folded up to ``checkpoint``.

    A tenant's snapshot is labelled with the checkpoint at which its own counts last
    changed (folding the log up to there gives the same counts), so a decision records
    nothing of other tenants' activity; a tenant with no counts reads ``empty``.
    """

    checkpoint: str = START_CHECKPOINT
    tenants: Mapping[str, ProfileSnapshot] = field(default_factory=dict)
    # one per instance: the router caches derived values in it, and instances are replaced
    empty: ProfileSnapshot = field(
        default_factory=ProfileSnapshot, init=False, repr=False, compare=False
    )

    def of(self, tenant: str) -> ProfileSnapshot:
        """The tenant's profiles (the empty snapshot when it has none)."""
        return self.tenants.get(tenant, self.empty)


class ProfileBuilder:
    """Mutable counts; ``snapshot`` freezes them. The read models' maths, in one place."""

    def __init__(self, base: ProfileSnapshot | None = None) -> None:
        self.cells: dict[tuple[str, str], CellStats] = dict(base.cells) if base else {}
        self.pairs: dict[tuple[str, str, str], PairStats] = dict(base.pairs) if base else {}

    def record_call(
        self, model: str, category: str, *, failed: bool, cost_usd: float, latency_ms: float,
        output_tokens: int = 0,
    ) -> None:  # fmt: skip
        """A panel call ended (panel.call.succeeded or panel.call.failed)."""
        c = self.cells.get((model, category), EMPTY_CELL)
        self.cells[(model, category)] = CellStats(
            c.right, c.wrong, c.agree, c.disagree, c.calls + 1, c.failures + failed,
            c.cost_usd + (0.0 if failed else cost_usd), c.latency_ms + latency_ms,
            c.output_tokens + (0 if failed else output_tokens),
        )  # fmt: skip

    def record_verdicts(self, category: str, verdicts: Iterable[tuple[str, bool]]) -> None:
        """The judge agreed or not with each (model) member (judge.decided)."""
        for model, agrees in verdicts:
            c = self.cells.get((model, category), EMPTY_CELL)
            self.cells[(model, category)] = CellStats(
                c.right, c.wrong, c.agree + agrees, c.disagree + (not agrees),
                c.calls, c.failures, c.cost_usd, c.latency_ms, c.output_tokens,
            )  # fmt: skip

    def record_outcome(
        self, category: str, members: Iterable[tuple[str, bool]], sign: int = 1
    ) -> None:
        """Ground truth: each (model) member's answer was right or not (outcome.recorded);
        ``sign=-1`` takes back an outcome a later one replaced (a run's latest counts).

        Also counts co-failure over every pair of graded seats, a model with itself
        included (self-fusion seats), since that is what makes self-fusion pay or not.
        """
        graded = list(members)
        for model, correct in graded:
            c = self.cells.get((model, category), EMPTY_CELL)
            self.cells[(model, category)] = CellStats(
                c.right + sign * correct, c.wrong + sign * (not correct), c.agree, c.disagree,
                c.calls, c.failures, c.cost_usd, c.latency_ms, c.output_tokens,
            )  # fmt: skip
        for i, (a, a_right) in enumerate(graded):
            for b, b_right in graded[i + 1 :]:
                key = pair_key(category, a, b)
                p = self.pairs.get(key, EMPTY_PAIR)
                both_wrong = not a_right and not b_right
                both_right = a_right and b_right
                self.pairs[key] = PairStats(
                    p.both_wrong + sign * both_wrong,
                    p.one_wrong + sign * (not both_wrong and not both_right),
                    p.both_right + sign * both_right,
                )

    def snapshot(self, checkpoint: str) -> ProfileSnapshot:
        """The counts so far, frozen, labelled with the checkpoint they reflect."""
        return ProfileSnapshot(checkpoint, dict(self.cells), dict(self.pairs))


MAX_RUNS_HELD = 200_000  # runs whose context a fold keeps: ~70 MB (350 bytes a run)


class ProfileFold:
    """Applies run events, in log order, to each tenant's ProfileBuilder.

    Only ``run-`` streams count: a replay re-judges a run that was already counted.
    A run's later events need its tenant, category and seats: the fold holds those of
    the latest ``max_runs`` runs (350 bytes each; ``trim`` lets go of older ones), in
    plain dicts of str and int that the garbage collector does not track (a run's
    tenant and category are one shared index into the few pairs seen). An event of a
    run it no longer holds is ignored here, so a reader of a long log first gives it
    those runs' request and panel (``holds`` says which it lacks;
    service.orchestration.router.fold_batch does).

    A run's latest outcome is its ground truth: an outcome takes back the counts of the
    one before it. The fold remembers each held run's latest graded seats; for a run
    whose context it was given (``load_context``), an earlier outcome may predate the
    fold, so ``needs_prior`` asks for it and ``recall_outcome`` gives it, uncounted.
    """

    def __init__(self, max_runs: int = MAX_RUNS_HELD, start: TenantProfiles | None = None) -> None:
        start = start or TenantProfiles()
        self.builders = {tenant: ProfileBuilder(s) for tenant, s in start.tenants.items()}
        self.max_runs = max_runs
        self._frozen = dict(start.tenants)  # tenant -> its counts when ``profiles`` last ran
        self._changed: set[str] = set()  # tenants counted since
        self._context: dict[str, int] = {}  # stream_id -> index in _contexts, oldest first
        self._contexts: list[tuple[str, str]] = []  # (tenant, category)
        self._context_index: dict[tuple[str, str], int] = {}
        self._seats: dict[str, dict[str, str]] = {}  # stream_id -> member_id -> model
        self._graded: dict[str, tuple[tuple[str, bool], ...]] = {}  # the latest outcome's
        self._partial: set[str] = set()  # context given, earlier outcomes not known here

    def builder(self, tenant: str) -> ProfileBuilder:
        """The tenant's counts (empty when it has none yet)."""
        found = self.builders.get(tenant)
        if found is None:
            found = self.builders[tenant] = ProfileBuilder()
        return found

    def profiles(self, checkpoint: str) -> TenantProfiles:
        """Every tenant's counts, frozen: those counted since the last call labelled
        ``checkpoint``, the others as they were (with the checkpoint they had)."""
        for tenant in self._changed:
            self._frozen[tenant] = self.builders[tenant].snapshot(checkpoint)
        self._changed.clear()
        return TenantProfiles(checkpoint, dict(self._frozen))

    def holds(self, stream_id: str) -> bool:
        """True when the fold has this run's context (its request)."""
        return stream_id in self._context

    def trim(self) -> None:
        """Let go of the oldest runs' context beyond ``max_runs`` (after a batch: never
        in the middle of one, whose later events may belong to those runs)."""
        while len(self._context) > self.max_runs:
            oldest = next(iter(self._context))
            del self._context[oldest], self._seats[oldest]
            self._graded.pop(oldest, None)
            self._partial.discard(oldest)

    def load_context(self, stream_id: str, event: Event, tenant: str = DEFAULT_TENANT) -> None:
        """A run's request or panel, read back for a run whose later events come now."""
        self.apply(stream_id, event, tenant)
        self._partial.add(stream_id)

    def needs_prior(self, stream_id: str) -> bool:
        """True when the run may have an outcome from before the fold that its next
        outcome must take back (give it with ``recall_outcome``, or ``no_prior``)."""
        return stream_id in self._partial and stream_id not in self._graded

    def recall_outcome(self, stream_id: str, event: OutcomeRecorded) -> None:
        """The run's latest outcome before the fold: remembered, not counted."""
        if stream_id in self._seats:
            self._graded[stream_id] = self._graded_seats(stream_id, event)
        self._partial.discard(stream_id)

    def no_prior(self, stream_id: str) -> None:
        """The run had no outcome before the fold."""
        self._partial.discard(stream_id)

    def _graded_seats(self, stream_id: str, event: OutcomeRecorded) -> tuple[tuple[str, bool], ...]:
        seats = self._seats[stream_id]
        return tuple(
            (seats[o.member_id], o.correct)
            for o in event.members
            if o.correct is not None and o.member_id in seats
        )

    def _open(self, stream_id: str, tenant: str, category: str) -> None:
        key = (sys.intern(tenant), sys.intern(category))
        index = self._context_index.get(key)
        if index is None:
            index = self._context_index[key] = len(self._contexts)
            self._contexts.append(key)
        self._context[stream_id] = index
        self._seats[stream_id] = {}

    def _counts(self, tenant: str) -> ProfileBuilder:
        self._changed.add(tenant)
        return self.builder(tenant)

    def apply(self, stream_id: str, event: Event, tenant: str = DEFAULT_TENANT) -> None:
        """Count one event of stream ``stream_id``. ``tenant`` is the run's, read with
        its run.requested (later events count for the tenant their run has)."""
        if not stream_id.startswith("run-"):
            return
        if isinstance(event, RunRequested):
            self._open(stream_id, tenant, event.category)
            return
        index = self._context.get(stream_id)
        if index is None:
            return
        tenant, category = self._contexts[index]
        seats = self._seats[stream_id]
        match event:
            case PanelSelected(members=members):
                seats.update((sys.intern(m.member_id), sys.intern(m.model)) for m in members)
            case PanelCallSucceeded():
                self._counts(tenant).record_call(
                    event.model, category, failed=False,
                    cost_usd=event.cost_usd, latency_ms=event.latency_ms,
                    output_tokens=event.output_tokens,
                )  # fmt: skip
            case PanelCallFailed():
                self._counts(tenant).record_call(
                    event.model, category, failed=True,
                    cost_usd=0.0, latency_ms=event.latency_ms,
                )  # fmt: skip
            case JudgeDecided(verdicts=verdicts):
                known = [(seats[v.member_id], v.agrees) for v in verdicts if v.member_id in seats]
                self._counts(tenant).record_verdicts(category, known)
            case OutcomeRecorded():
                graded = self._graded_seats(stream_id, event)
                prior = self._graded.get(stream_id)
                builder = self._counts(tenant)
                if prior is not None:  # the latest outcome counts: the one before goes
                    builder.record_outcome(category, prior, sign=-1)
                builder.record_outcome(category, graded)
                self._graded[stream_id] = graded
