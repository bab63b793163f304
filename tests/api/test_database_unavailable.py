"""The database out of reach under a running service: requests get a 503 that says so,
with Retry-After, not a bare "Internal error" 500."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.config import Config
from service.settings import Settings
from tests.api.conftest import MockProviders
from tests.conftest import TestDatabase


class Relay:
    """A TCP relay to Postgres in threads of its own (the test client's requests block
    the test's event loop), which can go away: every connection cut, new ones refused."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        url = urlsplit(database_url)
        self.target = (url.hostname or "127.0.0.1", url.port or 5432)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.gone = False
        self.lock = threading.Lock()  # a connection accepted as the relay goes goes too
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target)
                with self.lock:
                    self.sockets += [client, server]
                    if self.gone:
                        self._cut()
                        return
                for a, b, answers in ((client, server, False), (server, client, True)):
                    threading.Thread(target=self._pump, args=(a, b, answers), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if self.passes(source, data, answers):
                    sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def passes(self, source: socket.socket, data: bytes, answers: bool) -> bool:
        """Whether to relay a chunk read from ``source`` (the server's ``answers``, or
        the client's): all of them."""
        return True

    def go_away(self) -> None:
        with self.lock:
            self.gone = True
            self.listener.close()
            self._cut()

    def _cut(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.sockets.clear()


@contextlib.asynccontextmanager
async def served_through(
    relay: Relay, config: Config, providers: MockProviders, **settings: Any
) -> AsyncIterator[AsyncTestClient[Any]]:
    """A client of the service whose every database connection passes through
    ``relay`` (no sweeper, no projections); the relay goes away at the end, so the
    service stops without waiting on connections a test left silent."""
    url = urlsplit(relay.database_url)
    user = url.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{relay.port}" if user else f"127.0.0.1:{relay.port}"
    http = httpx.MockTransport(providers.handle)
    app = create_app(
        Settings(database_url=urlunsplit(url._replace(netloc=netloc)), **settings),
        config, http_transport=http, sweeper=False, projections=False, run_migrations=False,
    )  # fmt: skip
    try:
        async with AsyncTestClient(app=app) as client:
            yield client
            relay.go_away()
    finally:
        relay.go_away()
        await http.aclose()


async def test_requests_while_the_database_is_out_of_reach_get_503_with_retry_after(
    database: TestDatabase, config: Config, providers: MockProviders
) -> None:
    relay = Relay(database.url)
    async with served_through(relay, config, providers, pool_min_size=1, pool_max_size=4) as client:
        assert (await client.get("/v1/runs")).status_code == 200
        relay.go_away()
        answers: list[Any] = [
            await client.get("/v1/runs"),
            await client.post("/v1/fusions", json={"prompt": "2+2?"}),
        ]
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "1"
            assert answer.json()["title"] == "Database unavailable"


async def test_a_database_host_that_does_not_resolve_is_unavailable_too(
    config: Config, providers: MockProviders
) -> None:
    # DNS failing (a DNS server restarting, a failover's name not yet published) puts the
    # database out of reach as a refused connection does; it was a 500.
    settings = Settings(
        database_url="postgresql://postgres@fusion-ledger-db.invalid:5432/test",
        pool_min_size=0,
        pool_max_size=4,
    )
    http = httpx.MockTransport(providers.handle)
    app = create_app(
        settings, config, http_transport=http, sweeper=False, projections=False,
        run_migrations=False,
    )  # fmt: skip
    try:
        async with AsyncTestClient(app=app) as client:
            answer = await client.get("/v1/runs")
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "1"
    finally:
        await http.aclose()


async def test_a_key_checked_while_the_database_is_gone_is_unavailable(
    database: TestDatabase, config: Config, providers: MockProviders
) -> None:
    # The auth middleware looks an uncached key up in the database.
    relay = Relay(database.url)
    async with served_through(
        relay, config, providers, pool_min_size=1, pool_max_size=4, auth_required=True
    ) as client:
        first = await client.get("/v1/runs", headers={"authorization": "Bearer fl_nope1"})
        assert first.status_code == 401
        relay.go_away()
        answer = await client.get("/v1/runs", headers={"authorization": "Bearer fl_nope2"})
        assert answer.status_code == 503, answer.text
