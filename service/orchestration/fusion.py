"""A fusion run end to end: record the request, fan out, judge, finalize.

Runs are owned by the runner, not by the HTTP request: a client that disconnects
does not stop its run, and every run ends in answer.finalized or run.failed. On
shutdown the runner cancels open runs and records run.failed (reason shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import structlog

from service.domain.events import (
    AnswerFinalized,
    ClientIdentity,
    Event,
    JudgeFailed,
    JudgeSpec,
    PanelCallFailed,
    PanelCallSucceeded,
    PanelMember,
    PanelSelected,
    RunFailed,
    RunFailureReason,
    RunRequested,
)
from service.domain.judging import Candidate, question_text
from service.domain.routing import RouteInfeasible
from service.domain.runs import RunState, fold
from service.domain.scoring import CURRENT_NORMALIZER, normalize_answer
from service.metrics import Metrics
from service.orchestration.caller import ModelCaller
from service.orchestration.judge import run_judge
from service.orchestration.plan import FusionPlan, stable_seed
from service.orchestration.router import Router
from service.orchestration.run_writer import RunWriter
from service.providers.outcomes import CallFailed
from service.store import EventStore, WrongExpectedVersion
from service.tracing import model_call_span, record_call, run_span

log = structlog.get_logger("fusion")

# A member that answers while others are still calling lets its event wait this long
# for theirs, so members answering together share one append. Nothing waits on those
# appends before the judge has answered (the last member never lingers: its write
# carries the others' at once), so this costs no latency; it saves a transaction per
# fusion when members answer within it (ops/bench/fusion_overhead.py at 60/s: appends
# per run 4.0 -> 3.02, Postgres CPU per fusion 6.5-6.8 -> 5.6-5.9 ms, A/B alternating).
MEMBER_LINGER_S = 0.005

# How much longer than a run's own deadline a request waits for the run its
# Idempotency-Key made elsewhere (another replica's, closing late) before saying so.
EXISTING_GRACE_S = 30.0

# A call that timed out this close to the run's deadline (or after it) was stopped by
# the deadline, not by its own bound: a run that then fails, fails for lack of time.
DEADLINE_SLACK_S = 0.005


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before for a different request."""


class ShuttingDown(Exception):
    """This process stopped before the run began here; retrying elsewhere is safe (with
    the same Idempotency-Key, the retry finds the run if another replica drives it)."""


class StillOpen(Exception):
    """The Idempotency-Key's run is open and not driven here (another replica's, or a
    crashed process's that the sweeper has not closed yet): nothing to answer with."""


class Overloaded(Exception):
    """This process drives as many runs as it may; nothing was started or written."""


@dataclass(slots=True)
class RunHandle:
    """A run in progress: its id, the request it runs and the task that drives it."""

    run_id: uuid.UUID
    task: asyncio.Task[RunState]
    plan: FusionPlan  # what its Idempotency-Key stands for (compared by _fingerprint)
    cancel_reason: list[str] = field(default_factory=list)
    earlier: bool = False  # the stream existed: the Idempotency-Key's earlier run


@dataclass(frozen=True, slots=True)
class Fused:
    """A fusion's state, and whether this call ran it (not an earlier request's run)."""

    state: RunState
    ran_here: bool


class FusionRunner:
    """Starts runs and owns their tasks."""

    def __init__(
        self,
        store: EventStore,
        caller: ModelCaller,
        metrics: Metrics | None = None,
        router: Router | None = None,
        max_open_runs: int = 0,
        normalizer: int = CURRENT_NORMALIZER,
    ) -> None:
        self.store = store
        self.caller = caller
        self.metrics = metrics or Metrics()
        self.router = router
        # Past this many open runs a new one is refused (0: no bound). Beyond what the
        # machine can serve, more accepted work only makes every answer later.
        self.max_open_runs = max_open_runs
        self.normalizer = normalizer  # the answer normaliser new runs record (scoring)
        self._open: dict[uuid.UUID, RunHandle] = {}

    @property
    def open_runs(self) -> int:
        """Runs started by this process and not yet closed."""
        return len(self._open)

    def owned_run_ids(self) -> frozenset[uuid.UUID]:
        """Ids of the runs this process is driving (the sweeper leaves them alone); not
        those a request only waits on (its key's run, made elsewhere): a crashed
        process's run must stay the sweeper's to close."""
        return frozenset(run_id for run_id, h in self._open.items() if not h.earlier)

    async def fuse(self, plan: FusionPlan, run_id: uuid.UUID | None = None) -> RunState:
        """Run a fusion (or return the run its idempotency key already made)."""
        return (await self.fuse_here(plan, run_id)).state

    async def fuse_here(self, plan: FusionPlan, run_id: uuid.UUID | None = None) -> Fused:
        """As ``fuse``, and say whether this call ran the fusion or found it made."""
        run_id = run_id or plan.run_id()
        handle = self._open.get(run_id)
        joined = handle is not None
        if handle is not None and not _same_request(
            _requested(run_id, handle.plan, self.normalizer),
            _requested(run_id, plan, self.normalizer),
        ):  # the key's first run is still open here: compared only when joined
            raise IdempotencyConflict(_KEY_REUSED)
        if handle is None:
            if self.max_open_runs and len(self._open) >= self.max_open_runs:
                self.metrics.shed.inc()
                raise Overloaded(f"{len(self._open)} runs open, the bound of this process")
            task = asyncio.create_task(self._run(run_id, plan))
            handle = RunHandle(run_id, task, plan)
            self._open[run_id] = handle
            self.metrics.open_runs.set(len(self._open))
            handle.task.add_done_callback(lambda _: self._forget(run_id))
        # shield: a cancelled request (client gone) must not cancel the run itself
        state = await asyncio.shield(handle.task)
        return Fused(state, ran_here=not (joined or handle.earlier))

    def _forget(self, run_id: uuid.UUID) -> None:
        self._open.pop(run_id, None)
        self.metrics.open_runs.set(len(self._open))

    def _count_appended(self, events: Sequence[Event]) -> None:
        for event in events:
            self.metrics.events_appended.labels(event.type).inc()

    async def close(self, reason: str = "shutdown") -> None:
        """Cancel open runs; each records run.failed with the reason."""
        handles = list(self._open.values())
        for handle in handles:
            handle.cancel_reason.append(reason)
            handle.task.cancel()
        for handle in handles:
            with contextlib.suppress(BaseException):
                await handle.task

    async def _run(self, run_id: uuid.UUID, plan: FusionPlan) -> RunState:
        stream_id = f"run-{run_id}"
        writer = RunWriter(
            self.store, stream_id, plan.client.tenant, plan.client.actor, self._count_appended
        )
        # Every log line of this run (its task and the member tasks it starts) names it.
        structlog.contextvars.bind_contextvars(run_id=str(run_id))
        started = time.perf_counter()
        try:
            return await self._run_on(writer, run_id, plan, started)
        except asyncio.CancelledError:
            if writer.recorded or not self._taken_back_for_shutdown(run_id):
                raise
            # Shut down before this run wrote anything (its first append did not land),
            # or while it waited for another replica's run of its Idempotency-Key.
            raise ShuttingDown("the service is shutting down; nothing was run") from None
        finally:
            # Every path that closes the run (unroutable, failed, finalized, internal
            # error, cancelled) passes here once, returning or raising.
            self._closed(writer, started)

    async def _run_on(
        self, writer: RunWriter, run_id: uuid.UUID, plan: FusionPlan, started: float
    ) -> RunState:
        stream_id = writer.stream_id
        bound = log
        requested = _requested(run_id, plan, self.normalizer)
        try:
            plan = self._routed(plan, run_id)
        except RouteInfeasible as exc:
            return await self._unroutable(writer, plan, requested, exc, started)
        members = plan.members()
        selected = PanelSelected(
            members=members, method=plan.panel_method, router=plan.router_decision
        )
        # Not cut midway by a cancellation: closing the run needs to know whether it exists.
        first = asyncio.ensure_future(writer.append(requested, selected))
        try:
            ids = await asyncio.shield(first)
        except WrongExpectedVersion:
            return await self._existing(stream_id, plan, requested)
        except asyncio.CancelledError:
            await asyncio.wait([first])
            if not first.cancelled():
                first.exception()  # read: a failed append is handled below, not reported
            if not writer.recorded:
                raise  # nothing of this run was written (_run says why)
            return await self._cancelled(writer, run_id, started)
        try:
            with run_span(str(run_id), plan.category, plan.preset):
                state = await self._drive(writer, plan, members, ids[1], started)
        except asyncio.CancelledError:
            return await self._cancelled(writer, run_id, started)
        except WrongExpectedVersion:
            bound.warning("run.closed_elsewhere")
            return fold(e.decode() for e in await self.store.read_stream(stream_id))
        except Exception as exc:
            bound.exception("run.internal_error")
            await self._fail(writer, "internal_error", type(exc).__name__, started)
            # As the log has it: the close above, or one written elsewhere first.
            return fold(e.decode() for e in await self.store.read_stream(stream_id))
        return state

    async def _cancelled(self, writer: RunWriter, run_id: uuid.UUID, started: float) -> RunState:
        """Record the cancelled run's end; then re-raise the cancellation, unless it was
        this process's shutdown (close()) and nothing else: whoever waits for the run
        then gets its recorded end to answer with (a 502 saying "shutdown"), not a
        cancellation (a bare 500 from the server)."""
        reason: RunFailureReason = "shutdown" if self._shutting_down(run_id) else "cancelled"
        await asyncio.shield(self._fail(writer, reason, f"run {reason}", started))
        if not self._taken_back_for_shutdown(run_id):
            raise asyncio.CancelledError
        state = fold(writer.recorded)
        if not state.closed:  # its end came from elsewhere (or landed as it was cut)
            state = fold(e.decode() for e in await self.store.read_stream(writer.stream_id))
        return state

    def _shutting_down(self, run_id: uuid.UUID) -> bool:
        handle = self._open.get(run_id)
        return handle is not None and "shutdown" in handle.cancel_reason

    def _taken_back_for_shutdown(self, run_id: uuid.UUID) -> bool:
        """When this process's close() cancelled the run's task, and nothing else did:
        take the cancellation back (the caller answers with the run's end instead)."""
        task = asyncio.current_task()
        if task is None or not self._shutting_down(run_id) or task.cancelling() != 1:
            return False
        task.uncancel()
        return True

    def _closed(self, writer: RunWriter, started: float) -> None:
        """Count the run and log its summary, if this process wrote its terminal event
        (a run closed elsewhere, or an earlier request's run, is not counted here)."""
        state = fold(writer.recorded)
        if not state.closed:
            return
        failure = state.failed.reason if state.failed else ""
        self.metrics.runs.labels(state.status, failure).inc()
        log.info(
            "run.summary",
            status=state.status,
            reason=failure or None,
            category=state.request.category if state.request else None,
            panel=[m.model for m in state.members.values()],
            decided_by=state.finalized.decided_by if state.finalized else None,
            cost_usd=_total_cost(state),
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    async def _drive(
        self,
        writer: RunWriter,
        plan: FusionPlan,
        members: list[PanelMember],
        selected_id: uuid.UUID,
        started: float,
    ) -> RunState:
        deadline = started + plan.timeout_s
        question = question_text(plan.messages)
        run_key = writer.correlation_id
        # Members' events go to the log as they answer (an early one lingers up to
        # MEMBER_LINGER_S for the others); the judge starts once all have answered,
        # while the last one's event may still be on its way (the writer keeps the
        # order: the verdict's append queues behind it). The appends are
        # settled, and a failed one raised, before anything else is written; a failed
        # one (the run closed elsewhere, the database) also stops the members still
        # calling, and the judge is not called.
        outcomes: dict[str, Event] = {}
        cut_off: set[str] = set()  # members the run's deadline stopped
        appends: list[asyncio.Task[list[uuid.UUID]]] = []
        calling: list[asyncio.Task[None]] = []

        def append_done(task: asyncio.Task[list[uuid.UUID]]) -> None:
            if _failed(task):  # also reads the failure, so asyncio never reports it
                for call in calling:
                    call.cancel()

        async def member_task(member: PanelMember) -> None:
            event = await self._call_member(plan, member, run_key, deadline)
            outcomes[member.member_id] = event
            if isinstance(event, PanelCallFailed) and _out_of_time(event.error_kind, deadline):
                cut_off.add(member.member_id)
            linger = MEMBER_LINGER_S if len(outcomes) < len(members) else 0.0
            append = asyncio.create_task(
                writer.append(event, caused_by=selected_id, linger_s=linger)
            )
            append.add_done_callback(append_done)
            appends.append(append)

        async with asyncio.TaskGroup() as calls:
            calling.extend(calls.create_task(member_task(m)) for m in members)
        if any(_failed(a) for a in appends):
            await _settled(appends)  # raises the failure that stopped the calls
        written = {id(e) for e in writer.recorded}
        state = fold([*writer.recorded, *(e for e in outcomes.values() if id(e) not in written)])
        panel_cost = sum(m.cost_usd for m in state.members.values())
        successes = [Candidate(m.member_id, m.text or "") for m in state.succeeded]
        if len(successes) < plan.min_successes:
            reason: RunFailureReason = "quorum_not_met"
            message = (
                f"{len(successes)} of {len(members)} members answered; {plan.min_successes} needed"
            )
            if len(successes) + len(cut_off) >= plan.min_successes:
                # The members the deadline stopped could have made the quorum.
                reason = "timeout"
                message += (
                    f"; the run's {plan.timeout_s:g}s deadline stopped {len(cut_off)} still calling"
                )
            await _settled(appends)
            await self._fail(writer, reason, message, started, panel_cost)
            return fold(writer.recorded)
        assert state.request is not None  # the run's first append carried it
        normalizer = state.request.normalizer
        judge_spec = plan.judge
        if plan.max_cost_usd is not None and panel_cost >= plan.max_cost_usd:
            judge_spec = JudgeSpec(kind="vote", fallback=judge_spec.fallback)
        self_judging = judge_spec.model is not None and judge_spec.model in {
            m.model for m in members
        }
        weights = self._judge_weights(plan, judge_spec, state)
        result = await run_judge(
            self.caller,
            judge_spec,
            question,
            successes,
            seed=stable_seed(run_key, "judge"),
            timeout_s=deadline - time.perf_counter(),
            weights=weights,
            self_judging=self_judging,
            metrics=self.metrics,
            normalizer=normalizer,  # the version run.requested recorded
        )
        # The verdict and the run's end are one append: one transaction, one round trip.
        judged = writer.new(result.event, caused_by=selected_id)
        if result.decision is None:
            failure: RunFailureReason = "judge_failed"
            why = "the judge failed and the fallback is 'fail'"
            if isinstance(result.event, JudgeFailed) and _out_of_time(
                result.event.error_kind, deadline
            ):
                failure = "timeout"
                why = f"the run's {plan.timeout_s:g}s deadline left the judge no time to decide"
            end: Event = self._failed_event(failure, why, started, panel_cost + result.cost_usd)
        else:
            answer = result.decision.final_answer
            end = AnswerFinalized(
                answer=answer,
                answer_sha256=hashlib.sha256(answer.encode()).hexdigest(),
                answer_normalized=normalize_answer(answer, normalizer),
                decided_by=result.decided_by,
                latency_ms=(time.perf_counter() - started) * 1000,
                cost_usd=panel_cost + result.cost_usd,
                panel_cost_usd=panel_cost,
                judge_cost_usd=result.cost_usd,
            )
        await _settled(appends)
        await writer.write([judged, writer.new(end, caused_by=judged.event_id)])
        self.metrics.judge_outcomes.labels(judge_spec.kind, result.decided_by).inc()
        return fold(writer.recorded)

    async def _call_member(
        self, plan: FusionPlan, member: PanelMember, run_key: str, deadline: float
    ) -> Event:
        """Call one member; its outcome as the event to record."""
        timeout = min(plan.member_timeout_s, deadline - time.perf_counter())
        seed = member.params.seed
        if seed is None:
            seed = stable_seed(run_key, member.member_id)
        provider = self.caller.provider_of(member.model)
        with model_call_span(provider, member.model, "member") as span:
            outcome = await self.caller.complete(
                member.model,
                plan.messages,
                member.params,
                timeout_s=max(timeout, 0.001),
                seed=seed,
            )
            record_call(span, outcome)
        if self.router is not None:
            self.router.record_call(member.model, failed=isinstance(outcome, CallFailed))
        self.metrics.record_provider_call(member.model, outcome)
        event: Event
        if isinstance(outcome, CallFailed):
            event = PanelCallFailed(
                member_id=member.member_id,
                model=member.model,
                provider=provider,
                error_kind=outcome.error_kind,
                http_status=outcome.http_status,
                attempts=outcome.attempts,
                latency_ms=outcome.latency_ms,
                message=outcome.message,
            )
        else:
            event = PanelCallSucceeded(
                member_id=member.member_id,
                model=member.model,
                provider=provider,
                text=outcome.text,
                finish_reason=outcome.finish_reason,
                input_tokens=outcome.input_tokens,
                output_tokens=outcome.output_tokens,
                cost_usd=outcome.cost_usd,
                latency_ms=outcome.latency_ms,
                attempts=outcome.attempts,
                provider_response_id=outcome.provider_response_id,
            )
        return event

    # --- the router (issue 5): automatic panels, learned judge weights -----------------

    def _routed(self, plan: FusionPlan, run_id: uuid.UUID) -> FusionPlan:
        """The plan with its automatic panel picked on its tenant's profiles."""
        if plan.route is None:
            return plan
        if self.router is None:
            raise RouteInfeasible("panel", "automatic panels need a router; none is running")
        return self.router.route_plan(plan, run_id)

    async def _unroutable(
        self,
        writer: RunWriter,
        plan: FusionPlan,
        requested: RunRequested,
        exc: RouteInfeasible,
        started: float,
    ) -> RunState:
        """Valid at list prices, but the router finds no panel now (the profiles' costs
        exceed the budget): the run fails on the record."""
        try:
            await writer.append(requested)
        except WrongExpectedVersion:
            return await self._existing(writer.stream_id, plan, requested)
        over = exc.field == "max_cost_usd"
        reason: RunFailureReason = "budget_exceeded" if over else "internal_error"
        await self._fail(writer, reason, f"router: {exc}", started)
        return fold(writer.recorded)

    def _judge_weights(
        self, plan: FusionPlan, spec: JudgeSpec, state: RunState
    ) -> dict[str, float] | None:
        """Posterior accuracy of each answering member on the run's tenant's profiles,
        when the judge wants them."""
        if self.router is None or not (spec.weighted or spec.informed):
            return None
        members = [(m.member_id, m.model) for m in state.succeeded]
        return self.router.member_weights(plan.category, members, tenant=plan.client.tenant)

    async def _fail(
        self,
        writer: RunWriter,
        reason: RunFailureReason,
        message: str,
        started: float,
        cost: float = 0.0,
        caused_by: uuid.UUID | None = None,
    ) -> None:
        event = self._failed_event(reason, message, started, cost)
        with contextlib.suppress(WrongExpectedVersion):
            await writer.append(event, caused_by=caused_by)

    @staticmethod
    def _failed_event(
        reason: RunFailureReason, message: str, started: float, cost: float
    ) -> RunFailed:
        return RunFailed(
            reason=reason,
            message=message,
            latency_ms=(time.perf_counter() - started) * 1000,
            cost_usd=cost,
        )

    async def _existing(self, stream_id: str, plan: FusionPlan, mine: RunRequested) -> RunState:
        """The run an earlier request with the same idempotency key made, once closed."""
        handle = self._open.get(uuid.UUID(stream_id.removeprefix("run-")))
        if handle is not None:
            handle.earlier = True
        deadline = time.monotonic() + plan.timeout_s + EXISTING_GRACE_S
        while True:
            state = fold(e.decode() for e in await self.store.read_stream(stream_id))
            if state.request is not None and not _same_request(state.request, mine):
                raise IdempotencyConflict(_KEY_REUSED)
            if state.closed:
                return state
            if time.monotonic() > deadline:
                raise StillOpen(
                    f"run {stream_id.removeprefix('run-')} of this Idempotency-Key is still "
                    "open, driven by another process or left by one that stopped (the sweeper "
                    "closes such runs); retry later with the same key"
                )
            await asyncio.sleep(0.05)


def _requested(run_id: uuid.UUID, plan: FusionPlan, normalizer: int) -> RunRequested:
    return RunRequested(
        run_id=str(run_id),
        messages=plan.messages,
        category=plan.category,
        category_source=plan.category_source,
        category_rule=plan.category_rule,
        tags=plan.tags,
        preset=plan.preset,
        panel="auto" if plan.route is not None else plan.panel,
        judge=plan.judge,
        params=plan.params,
        client=plan.client,
        idempotency_key=plan.idempotency_key,
        max_cost_usd=plan.max_cost_usd,
        timeout_s=plan.timeout_s,
        min_successes=plan.min_successes,
        normalizer=normalizer,
    )


_KEY_REUSED = "this Idempotency-Key was already used for a different request"


def _same_request(a: RunRequested, b: RunRequested) -> bool:
    """Whether two requests of one Idempotency-Key ask for the same run."""
    return _fingerprint(a) == _fingerprint(b)


def _fingerprint(event: RunRequested) -> RunRequested:
    """The request as its client chose it, to compare with another one of the same key:
    the recorded request without who sent it (a retry may come with another user agent)
    and without what the service inferred (a category the client did not give, and the
    rule that gave it). An automatic panel is recorded as "auto", before the router picks
    (the panel it picked is in panel.selected), so a retry of a routed request matches.
    The normaliser version is the service's choice too: a retry after an upgrade finds
    the run its first request made."""
    given = event.category_source == "given"
    return msgspec.structs.replace(
        event,
        client=ClientIdentity(),
        category=event.category if given else "",
        category_source="given" if given else "default",
        category_rule=None,
        normalizer=CURRENT_NORMALIZER,
    )


def _out_of_time(error_kind: str, deadline: float) -> bool:
    """A call that timed out when the run's deadline came: stopped by the run's time,
    not failed on its own (its own bound, a provider's, came earlier)."""
    return error_kind == "timeout" and time.perf_counter() >= deadline - DEADLINE_SLACK_S


def _total_cost(state: RunState) -> float:
    if state.finalized is not None:
        return state.finalized.cost_usd
    return state.failed.cost_usd if state.failed is not None else 0.0


async def _settled(appends: list[asyncio.Task[list[uuid.UUID]]]) -> None:
    """Wait for the members' appends; raise the first failure (WrongExpectedVersion:
    the run was closed elsewhere) once all have ended. asyncio.wait, not gather: a
    cancelled run must not cancel an append in flight (its batch could be committed
    and still be dropped from the writer's bookkeeping)."""
    if appends:
        await asyncio.wait(appends)
    for append in appends:
        if _failed(append):
            raise append.exception()  # type: ignore[misc]  # _failed: not None


def _failed(task: asyncio.Task[list[uuid.UUID]]) -> bool:
    """The task ended with an exception (reading it, so asyncio does not report it)."""
    return task.done() and not task.cancelled() and task.exception() is not None
