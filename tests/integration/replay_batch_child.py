"""A batch-replay worker in a process of its own, for the test that kills it: it
submits a batch over every run with an LLM judge that answers ``allow`` times and
then hangs, prints ``batch_id=<id>`` (after log lines), and waits to be killed.

    python -m tests.integration.replay_batch_child DATABASE_URL ALLOW
"""

from __future__ import annotations

import asyncio
import sys

from service.domain.events import JudgeSpec, ReplayFilter
from service.orchestration.batch import BatchReplayer
from service.orchestration.replay import Replayer
from service.store import EventStore
from service.store.database import create_pool
from tests.integration.replay_fixtures import ScriptedJudge, offline_config

JUDGE = JudgeSpec(kind="select", model="sim/judge-strong")


async def main(url: str, allow: int) -> None:
    pool = await create_pool(url, min_size=1, max_size=4)
    store = EventStore(pool)
    batches = BatchReplayer(store, Replayer(store, ScriptedJudge(allow), offline_config()))
    accepted = await batches.submit(
        ReplayFilter(), JUDGE, concurrency=2, tenant="default", actor="test"
    )
    print(f"batch_id={accepted.batch_id}", flush=True)
    await batches.wait(accepted.batch_id)  # the judge hangs: only a kill ends this


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
