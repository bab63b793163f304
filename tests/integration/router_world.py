"""Shared set-up for the router's tests: the simulator's configuration with an
automatic-panel preset, fusions run through a FusionRunner, ground truth recorded, and
waiting for the router to have followed the whole log."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import msgspec

from service.config import Config, JudgeConfig, PresetConfig, RouterConfig
from service.domain.events import (
    ClientIdentity,
    Event,
    GenerationParams,
    MemberOutcome,
    Message,
    OutcomeRecorded,
    PanelSelected,
    RunRequested,
)
from service.domain.runs import RunState
from service.domain.scoring import answers_match
from service.orchestration.fusion import FusionRunner
from service.orchestration.planning import FusionAsk, plan_fusion
from service.orchestration.router import Router
from service.store import Checkpoint, EventStore, NewEvent
from service.store.postgres import START, checkpoint_of
from tests.conftest import RunningSimulator

SIM_POOL = ("sim/model-a", "sim/model-b", "sim/model-c", "sim/model-e")


def routed_config(
    simulator: RunningSimulator,
    pool: Sequence[str] = SIM_POOL,
    k: int = 3,
    *,
    weighted: bool = True,
    max_cost_usd: float | None = None,
) -> Config:
    """The simulator's config plus preset "auto" (router over ``pool``, weighted vote),
    with one attempt per call so a failing model fails fast."""
    config: Config = simulator.config()
    auto = PresetConfig(
        panel="auto",
        judge=JudgeConfig(kind="vote", weighted=weighted),
        min_successes=1,
        router=RouterConfig(k=k, candidates=list(pool), max_cost_usd=max_cost_usd),
    )
    providers = {
        name: msgspec.structs.replace(p, max_attempts=1) for name, p in config.providers.items()
    }
    return msgspec.structs.replace(
        config, providers=providers, presets={**config.presets, "auto": auto}
    )


async def fuse(
    runner: FusionRunner,
    config: Config,
    prompt: str,
    *,
    preset: str = "auto",
    tenant: str = "default",
    **ask: object,
) -> tuple[uuid.UUID, RunState]:
    """Plan and run one fusion for the tenant, as the API does."""
    plan = plan_fusion(
        config,
        FusionAsk(
            messages=[Message(role="user", content=prompt)],
            preset=preset,
            client=ClientIdentity(tenant=tenant),
            params=GenerationParams(),
            **ask,  # type: ignore[arg-type]
        ),
    )
    run_id = plan.run_id()
    return run_id, await runner.fuse(plan, run_id)


async def record_truth(
    store: EventStore, run_id: uuid.UUID, state: RunState, expected: str
) -> None:
    """Append outcome.recorded: each member's answer right or wrong against ``expected``."""
    members = [
        MemberOutcome(member_id=m.member_id, correct=answers_match(m.text or "", expected))
        for m in state.succeeded
    ]
    final = state.finalized.answer if state.finalized else ""
    outcome = OutcomeRecorded(
        source="dataset",
        expected=expected,
        final_correct=answers_match(final, expected),
        members=members,
    )
    await store.append_to_stream(f"run-{run_id}", [NewEvent(outcome)])


async def run_events(store: EventStore, run_id: uuid.UUID) -> list[Event]:
    """A run's events, decoded."""
    return [e.decode() for e in await store.read_stream(f"run-{run_id}")]


async def selection(store: EventStore, run_id: uuid.UUID) -> PanelSelected:
    """A run's panel.selected event."""
    return next(e for e in await run_events(store, run_id) if isinstance(e, PanelSelected))


async def requested(store: EventStore, run_id: uuid.UUID) -> RunRequested:
    """A run's run.requested event."""
    return next(e for e in await run_events(store, run_id) if isinstance(e, RunRequested))


async def log_end(store: EventStore) -> Checkpoint:
    """The checkpoint after the last committed event."""
    end = START
    while batch := await store.read_all(end, 1000):
        end = checkpoint_of(batch[-1])
    return end


async def caught_up(store: EventStore, router: Router) -> Checkpoint:
    """Wait until the router's profiles reflect the whole log. Gap-safe reading waits
    for every older transaction on the server, other tests' too: allow for that."""
    end = START
    for _ in range(1200):
        end = await log_end(store)
        if end != START and router.profiles.checkpoint == str(end):
            return end
        await asyncio.sleep(0.05)
    raise AssertionError(f"router still at {router.profiles.checkpoint}, log at {end}")
