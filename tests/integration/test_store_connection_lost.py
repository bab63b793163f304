"""The database misbehaving under the store: sessions the server ends (a killed backend,
a restart), answers lost on the way back. Every append is whole and found once, reads
go on, subscriptions keep their wake-ups, and a stopping worker stops.

Sessions are ended with pg_terminate_backend, only this test's own: its pool carries
an application_name of its own, and the kills filter on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from service.domain.events import RunFailed
from service.projections.runner import ProjectionWorker
from service.store import ANY, NO_STREAM, EventStore, NewEvent, WrongExpectedVersion
from service.store.bulk_append import append_new_streams
from service.store.database import DATABASE_ERRORS, create_pool
from service.store.postgres import AppendResult
from tests.conftest import TestDatabase

T = TypeVar("T")


def event() -> NewEvent:
    return NewEvent(RunFailed(reason="abandoned", message="a fault test's event"))


@pytest.fixture
async def own_pool(database: TestDatabase) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    """A pool whose sessions are this test's alone to end; and their application_name."""
    name = f"faults-{uuid.uuid4().hex[:12]}"
    pool = await create_pool(f"{database.url}&application_name={name}", 4, 4)
    try:
        yield pool, name
    finally:
        pool.terminate()  # its sessions may be dead: nothing to close gracefully


async def end_sessions(database: TestDatabase, name: str, where: str = "true") -> int:
    """pg_terminate_backend on this test's sessions (those matching ``where``)."""
    admin = await asyncpg.connect(database.admin_url)
    try:
        ended: int = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = current_database() AND application_name = $1 AND {where}",
            name,
        )
        return ended
    finally:
        await admin.close()


async def test_statements_on_sessions_the_server_just_ended_succeed(
    database: TestDatabase, own_pool: tuple[asyncpg.Pool, str]
) -> None:
    # Every idle session of the pool ended at once (a restart, a failover, a DBA's
    # kill): the next statements met them dead, and an append failed, failing its run
    # (internal_error), or a read failed its request. Sent again on a fresh session,
    # they succeed.
    pool, name = own_pool
    store = EventStore(pool)
    stream = f"run-{uuid.uuid4()}"
    await store.append_to_stream(stream, [event()], NO_STREAM)
    for version in range(1, 11):
        async with pool.acquire(), pool.acquire(), pool.acquire(), pool.acquire():
            pass  # all four sessions open and idle
        assert await end_sessions(database, name) == 4
        appended, read = await asyncio.gather(
            store.append_to_stream(stream, [event()], version), store.read_stream(stream)
        )
        assert appended.stream_version == version + 1
        assert len(read) in (version, version + 1)
    assert [e.stream_version for e in await store.read_stream(stream)] == list(range(1, 12))


class Proxy:
    """A TCP proxy to Postgres that can drop the server's answers and cut every
    connection: an append commits, and its answer never arrives."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mute = False  # the server's answers are dropped
        self._sockets: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.target)
        self._sockets += [client_w, server_w]
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w, True))

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answers: bool = False
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not (answers and self.mute):
                    writer.write(data)
                    await writer.drain()
        writer.close()

    def cut(self) -> None:
        """Reset every connection (RST); new ones pass, with answers."""
        for writer in self._sockets:
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
        self._sockets.clear()
        self.mute = False

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def proxied_store(database: TestDatabase) -> AsyncIterator[tuple[EventStore, Proxy]]:
    """A store whose one connection passes through a Proxy (one: the statement to lose
    is then prepared on it by a warm-up, before the answers are dropped)."""
    url = urlsplit(database.url)
    proxy = Proxy((url.hostname or "127.0.0.1", url.port or 5432))
    port = await proxy.start()
    user = url.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    pool = await create_pool(urlunsplit(url._replace(netloc=netloc)), 1, 1)
    try:
        yield EventStore(pool), proxy
    finally:
        pool.terminate()
        await proxy.close()


async def lose_the_answer(
    database: TestDatabase, proxy: Proxy, write: Awaitable[T], event_id: uuid.UUID
) -> T | BaseException:
    """Run ``write`` with the server's answers dropped; once its event ``event_id`` has
    committed, cut every connection: what the write then returns or raises."""
    proxy.mute = True
    task = asyncio.ensure_future(write)
    admin = await asyncpg.connect(database.url)  # straight to the server
    try:
        for _ in range(500):
            if await admin.fetchval("SELECT 1 FROM events WHERE event_id = $1", event_id):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the append did not commit")
        assert not task.done()  # committed, unanswered
        proxy.cut()
        [result] = await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
        return result
    finally:
        await admin.close()


@pytest.mark.parametrize("mode", ["no_stream", "any", "exact"])
async def test_an_append_whose_answer_was_lost_is_found_not_failed(
    database: TestDatabase, proxied_store: tuple[EventStore, Proxy], mode: str
) -> None:
    # The append commits; the connection dies before its answer arrives. It raised, so
    # a run's writer took it for not written: it failed the run (whose close then met
    # a wrong expected version), or left it open for the sweeper, answering "running".
    # Sent again, it is found, and reported as this call's own write, not an earlier
    # call's (an outcome's request was answered "recorded before").
    store, proxy = proxied_store
    stream = f"run-{uuid.uuid4()}"
    await store.append_to_stream(f"run-{uuid.uuid4()}", [event()], NO_STREAM)  # warm
    if mode != "no_stream":
        await store.append_to_stream(stream, [event()], NO_STREAM)
    await store.notifier.flush()  # its wake-up's answer is not the one to lose
    expected = {"no_stream": NO_STREAM, "any": ANY, "exact": 1}[mode]
    new = event()
    result = await lose_the_answer(
        database, proxy, store.append_to_stream(stream, [new], expected), new.event_id
    )
    assert isinstance(result, AppendResult), repr(result)
    version = 1 if mode == "no_stream" else 2
    assert (result.stream_version, result.duplicate) == (version, False)
    assert [e.event_id for e in await store.read_stream(stream)][-1] == new.event_id
    after = await store.append_to_stream(stream, [event()], result.stream_version)
    assert after.stream_version == version + 1  # the writer's version was right


async def test_a_bulk_append_whose_answer_was_lost_says_the_streams_exist(
    database: TestDatabase, proxied_store: tuple[EventStore, Proxy]
) -> None:
    # Committed, yet reported as another writer's streams: the batch worker then
    # appends them one by one, and finds each as written.
    store, proxy = proxied_store
    await append_new_streams(store, [(f"replay-{uuid.uuid4()}", [event()])])  # warm
    await store.notifier.flush()
    writes = [(f"replay-{uuid.uuid4()}", [event(), event()]) for _ in range(3)]
    result = await lose_the_answer(
        database, proxy, append_new_streams(store, writes), writes[-1][1][-1].event_id
    )
    assert isinstance(result, WrongExpectedVersion), repr(result)
    for stream_id, events in writes:
        assert (await store.append_to_stream(stream_id, events, NO_STREAM)).duplicate


async def test_a_subscription_listens_again_when_its_session_ends(
    database: TestDatabase, own_pool: tuple[asyncpg.Pool, str]
) -> None:
    # The LISTEN session died, reads (through the pool) went on: the subscriber (the
    # router's) noticed nothing and was never woken again, polling only, and at
    # shutdown its cancellation was lost (the service waited 10 s for it).
    pool, name = own_pool
    store = EventStore(pool)
    await store.append_to_stream(f"run-{uuid.uuid4()}", [event()], NO_STREAM)
    batches = store.subscribe(poll_interval=60.0)  # only a wake-up can bring a batch
    try:
        assert len(await anext(batches)) == 1
        waiting = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0.2)  # the subscriber now waits on its LISTEN session
        assert await end_sessions(database, name, "query LIKE 'LISTEN%'") == 1
        await asyncio.sleep(0.2)
        await store.append_to_stream(f"run-{uuid.uuid4()}", [event()], NO_STREAM)
        assert len(await asyncio.wait_for(waiting, 10)) == 1
        await store.append_to_stream(f"run-{uuid.uuid4()}", [event()], NO_STREAM)
        assert len(await asyncio.wait_for(anext(batches), 10)) == 1  # listening again
    finally:
        await batches.aclose()


async def test_a_worker_whose_session_ended_stops_when_cancelled(
    database: TestDatabase, own_pool: tuple[asyncpg.Pool, str]
) -> None:
    # The session ended while the worker waited; then the service stopped. Giving the
    # dead session back raised InterfaceError in place of the cancellation, the loop
    # took that for a database error and carried on: shutdown waited for it in vain.
    pool, name = own_pool
    worker = ProjectionWorker(pool, poll_interval=30.0)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.caught_up.wait(), 10)
        assert await end_sessions(database, name, f"pid = {worker.server_pid}") == 1
        await asyncio.sleep(0.3)  # the client has seen its session end
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def test_what_a_statement_on_an_ended_session_raises_is_a_database_error(
    database: TestDatabase, own_pool: tuple[asyncpg.Pool, str]
) -> None:
    # Straight on the pool (as the router's and the sweeper's own queries are), a
    # statement may meet a session the server ended while it sat idle: asyncpg raises
    # InternalClientError then, which DATABASE_ERRORS lacked, so a loop retrying those
    # (the router's) ended for good instead of pausing, its profiles frozen.
    pool, name = own_pool
    raised: set[type[BaseException]] = set()
    for _ in range(20):
        async with pool.acquire(), pool.acquire(), pool.acquire(), pool.acquire():
            pass
        await end_sessions(database, name)
        answers = await asyncio.gather(
            pool.fetchval("SELECT 1"), pool.fetchval("SELECT 1"), return_exceptions=True
        )
        raised |= {type(a) for a in answers if isinstance(a, BaseException)}
    assert raised, "no statement met an ended session"
    assert all(issubclass(kind, DATABASE_ERRORS) for kind in raised), raised
