"""A weighted replay judge whose source run recorded no weights reads the router's track
records of the source run's tenant, never another tenant's: alone and in a batch."""

from __future__ import annotations

import uuid

from service.domain.events import JudgeDecided, JudgeSpec, ReplayFilter
from service.domain.profiles import CellStats, ProfileSnapshot, TenantProfiles
from service.orchestration.batch import BatchReplayer
from service.orchestration.replay import Replayer, batch_replay_id
from service.orchestration.router import Router
from service.store import NO_STREAM, EventStore, NewEvent
from tests.integration.replay_fixtures import PANEL, ScriptedJudge, offline_config, recorded_run

CATEGORY = "multiple_choice"  # recorded_run's
WEIGHTED = JudgeSpec(kind="vote", weighted=True)


def default_tenants_track_records() -> TenantProfiles:
    """Tenant "default" knows the third model right and the others wrong; "t2" has none."""
    right, wrong = CellStats(right=200), CellStats(wrong=200)
    cells = {(PANEL[0], CATEGORY): wrong, (PANEL[1], CATEGORY): wrong, (PANEL[2], CATEGORY): right}
    return TenantProfiles("9:9", {"default": ProfileSnapshot("9:9", cells)})


async def test_a_tenants_weighted_replays_read_its_own_track_records(store: EventStore) -> None:
    run_id = uuid.uuid4()
    meta = {"correlation_id": str(run_id), "tenant": "t2", "actor": "test"}
    events = [NewEvent(e, meta) for e in recorded_run(run_id, ("B", "B", "A"))]
    await store.append_to_stream(f"run-{run_id}", events, NO_STREAM)
    router = Router(offline_config(), profiles=default_tenants_track_records())
    members = [(f"m{i + 1}", model) for i, model in enumerate(PANEL)]
    prior = router.member_weights(CATEGORY, members, tenant="t2")
    assert prior != router.member_weights(CATEGORY, members, tenant="default")
    replayer = Replayer(store, ScriptedJudge(), offline_config(), router=router)

    alone = await replayer.replay(run_id, WEIGHTED, tenant="t2", actor="test")
    assert alone.state.judge is not None and alone.state.judge.member_weights == prior
    assert alone.state.finalized is not None and alone.state.finalized.answer == "B"

    batches = BatchReplayer(store, replayer)
    accepted = await batches.submit(
        ReplayFilter(), WEIGHTED, concurrency=1, tenant="t2", actor="test"
    )
    await batches.wait(accepted.batch_id)
    replay = f"replay-{batch_replay_id(accepted.batch_id, str(run_id))}"
    decided = [r.decode() for r in await store.read_stream(replay)][1]
    assert isinstance(decided, JudgeDecided) and decided.member_weights == prior
