"""A replica stopping (a rolling restart) while it re-judges a run for a request: the
request is told to retry, which another replica can do, never a bare 500."""

from __future__ import annotations

import asyncio

from service.config import parse_config
from service.store.database import connect
from tests.conftest import TestDatabase
from tests.integration.test_run_lifecycle import CONFIG, Remote, stopping_server


async def test_a_stopping_server_tells_a_waiting_replay_request_to_retry(
    database: TestDatabase,
) -> None:
    # Before: the server waited its grace with the judge still calling, then cancelled
    # the request, which its client saw as a bare text/plain 500; nothing of the
    # replay was written (it is one append, after the judge), so a retry is safe.
    remote = Remote()  # `hang` never answers: the replay's judge
    async with stopping_server(database, parse_config(CONFIG), remote) as (_, server, client):
        fused = await client.post("/v1/fusions", json={"prompt": "3+4?", "panel": ["fast"]})
        assert fused.status_code == 200, fused.text
        judge = {"judge": {"kind": "synthesize", "model": "hang"}}
        replaying = asyncio.create_task(
            client.post(f"/v1/runs/{fused.json()['run_id']}/replays", json=judge)
        )
        for _ in range(400):  # the member's call, then the judge's
            if remote.calls >= 2:
                break
            await asyncio.sleep(0.01)
        server.should_exit = True  # as SIGTERM does
        response = await replaying
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["title"] == "Shutting down"
    conn = await connect(database.url)
    try:  # nothing of it was written: the retry, anywhere, replays the run afresh
        assert await conn.fetchval("SELECT count(*) FROM streams WHERE category = 'replay'") == 0
    finally:
        await conn.close()
