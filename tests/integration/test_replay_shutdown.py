"""A replica stopping (a rolling restart) while it re-judges a run for a request: the
request is told to retry, which another replica can do, never a bare 500."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

import httpx
import uvicorn

from service.app import create_app
from service.config import parse_config
from service.serving import RUNS_CLOSE_MARGIN_S, ClosingServer
from service.settings import Settings
from service.store.database import connect
from tests.conftest import TestDatabase
from tests.integration.test_run_lifecycle import CONFIG, Remote


async def test_a_stopping_server_tells_a_waiting_replay_request_to_retry(
    database: TestDatabase,
) -> None:
    # Before: the server waited its grace with the judge still calling, then cancelled
    # the request, which its client saw as a bare text/plain 500; nothing of the
    # replay was written (it is one append, after the judge), so a retry is safe.
    remote = Remote()  # `hang` never answers: the replay's judge
    settings = Settings(database_url=database.url, pool_min_size=1, pool_max_size=5)
    app = create_app(
        settings,
        parse_config(CONFIG),
        sweeper=False,
        projections=False,
        http_transport=httpx.MockTransport(remote.handle),
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    grace = RUNS_CLOSE_MARGIN_S + 1  # what is in flight is closed 1 s after the stop
    server = ClosingServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                       timeout_graceful_shutdown=int(grace)),
        app,
    )  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    break
            await asyncio.sleep(0.05)
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
    await asyncio.to_thread(thread.join, 30)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["title"] == "Shutting down"
    conn = await connect(database.url)
    try:  # nothing of it was written: the retry, anywhere, replays the run afresh
        assert await conn.fetchval("SELECT count(*) FROM streams WHERE category = 'replay'") == 0
    finally:
        await conn.close()
