"""An outcome whose append committed and whose answer was lost: the store sends it
again and finds it, and the one request that recorded it is told so (201), not that
an earlier request had (200, "existing")."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Any

import asyncpg

from service.config import Config
from tests.api.conftest import MockProviders
from tests.api.test_database_unavailable import Relay, served_through
from tests.conftest import TestDatabase

COUNT_OUTCOMES = "SELECT count(*) FROM events WHERE event_type = 'outcome.recorded'"


class MutingRelay(Relay):
    """Drops the server's answers from the moment a client message names ``trigger``;
    ``cut`` then resets every connection and lets new ones through with answers."""

    trigger = b"outcome.recorded"

    def __init__(self, database_url: str) -> None:
        self.mute = self.fired = False
        super().__init__(database_url)

    def passes(self, source: socket.socket, data: bytes, answers: bool) -> bool:
        if not answers and not self.fired and self.trigger in data:
            self.mute = self.fired = True  # once: the resent append passes
        return not (answers and self.mute)

    def cut(self) -> None:
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
            self.sockets.clear()
            self.mute = False


async def test_the_one_outcome_whose_answer_was_lost_is_created_not_found(
    database: TestDatabase, config: Config, providers: MockProviders
) -> None:
    proxy = MutingRelay(database.url)
    admin = await asyncpg.connect(database.url)
    try:
        async with served_through(
            proxy, config, providers, pool_min_size=2, pool_max_size=4
        ) as client:
            run: Any = (await client.post("/v1/fusions", json={"prompt": "2+2?"})).json()
            assert run["status"] == "finalized", run

            def cut_once_committed() -> None:  # a thread: the request blocks this loop
                async def poll() -> None:
                    conn = await asyncpg.connect(database.url)
                    try:
                        for _ in range(1000):
                            if await conn.fetchval(COUNT_OUTCOMES):
                                proxy.cut()
                                return
                            await asyncio.sleep(0.01)
                    finally:
                        await conn.close()

                asyncio.run(poll())

            cutter = threading.Thread(target=cut_once_committed, daemon=True)
            cutter.start()
            answer = await client.post(
                f"/v1/runs/{run['run_id']}/outcomes", json={"expected": "4"},
                headers={"idempotency-key": "first-and-only"},
            )  # fmt: skip
            cutter.join(30)
        recorded = await admin.fetchval(COUNT_OUTCOMES)
        assert recorded == 1
        # The one and only request that recorded the outcome: 201, not "recorded before".
        assert answer.status_code == 201, (answer.status_code, answer.text)
    finally:
        await admin.close()
