"""The Postgres event store: append with expected version, read a stream, read all
in gap-safe commit order, and subscribe (NOTIFY wake-up with a polling fallback)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import structlog

from service.store.codec import NewEvent, RecordedEvent, encode_event, encode_json
from service.store.database import DATABASE_ERRORS, Connection, again_if_lost, stateful
from service.store.errors import EventIdConflict, WrongExpectedVersion

ANY: Final = -1
NO_STREAM: Final = 0
NOTIFY_CHANNEL: Final = "fusion_ledger_events"

log = structlog.get_logger("store")

APPEND_SQL = """
SELECT first_position, last_position, stream_version, duplicate
FROM append_to_stream($1, $2, $3::uuid[], $4::text[], $5::smallint[], $6::jsonb[], $7::jsonb[])
"""

READ_STREAM_SQL = """
SELECT global_position, transaction_id::text::bigint AS transaction_id, stream_id,
    stream_version, event_id, event_type, schema_version, data, metadata, recorded_at,
    prev_hash, hash
FROM events
WHERE stream_id = $1 AND stream_version > $2 AND stream_version <= $3
ORDER BY stream_version
"""

# Gap-safe: a transaction that took a lower global_position may still be open. Only
# events of transactions older than every open one (xid < snapshot xmin) are
# returned, in (transaction_id, global_position) order, so nothing can later appear
# before the returned checkpoint.
READ_ALL_SQL = """
SELECT global_position, transaction_id::text::bigint AS transaction_id, stream_id,
    stream_version, event_id, event_type, schema_version, data, metadata, recorded_at,
    prev_hash, hash
FROM events
WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY events.transaction_id, events.global_position  -- the column, not the bigint alias
LIMIT $3
"""


@dataclass(frozen=True, slots=True, order=True)
class Checkpoint:
    """A reader's place in commit order: (transaction_id, global_position)."""

    transaction_id: int = 0
    global_position: int = 0

    def __str__(self) -> str:
        return f"{self.transaction_id}:{self.global_position}"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse 'transaction_id:global_position'."""
        xid, _, pos = text.partition(":")
        return cls(int(xid), int(pos))


START: Final = Checkpoint()


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed; ``duplicate`` when an earlier call had written these
    events (an idempotent retry), not when this call's own first attempt had and only
    its answer was lost (the store sent it again)."""

    first_position: int
    last_position: int
    stream_version: int
    duplicate: bool


def event_columns(events: Sequence[NewEvent]) -> tuple[list[Any], ...]:
    """The append functions' array arguments: ids, types, schema versions, data, metadata."""
    return (
        [e.event_id for e in events],
        [e.event.type for e in events],
        [e.event.schema_version for e in events],
        [encode_event(e.event) for e in events],
        [encode_json(dict(e.metadata)) for e in events],
    )


def _row_to_event(row: asyncpg.Record) -> RecordedEvent:
    return RecordedEvent(**dict(row))


def checkpoint_of(event: RecordedEvent) -> Checkpoint:
    """The checkpoint just after this event."""
    return Checkpoint(event.transaction_id, event.global_position)


# The wake-up, in a transaction of its own that need not be durable (one round trip).
# Its payload is the log's schema (the channel is server-wide); one wake-up may stand
# for many appends, so it names no stream.
NOTIFY_SQL: Final = (
    "BEGIN; SET LOCAL synchronous_commit TO off; "
    f"SELECT pg_notify('{NOTIFY_CHANNEL}', current_schema()); COMMIT"
)


class Notifier:
    """Tells the log's readers (LISTEN on NOTIFY_CHANNEL) that it grew, once appends
    have committed, outside their transactions.

    A transaction that NOTIFYs takes a lock at commit that every other notifying
    transaction waits for, and keeps it until its commit is flushed: with a NOTIFY in
    each append (as the append functions had until migration 0040), appends committed
    one at a time (16 writers: 4,400-4,700 commits/s, against 10,100-15,500 without),
    and under load that lock was their most frequent wait. Here one NOTIFY is in flight
    at a time, and appends that commit meanwhile share the next one. Readers also poll:
    a wake-up lost to a database error costs them a poll interval, not an event.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._sending: asyncio.Task[None] | None = None
        self._again = False

    def poke(self) -> None:
        """Wake the readers soon (after what has committed by now)."""
        if self._sending is not None and not self._sending.done():
            self._again = True  # the one in flight may have left before this commit
            return
        self._sending = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        while True:
            self._again = False
            try:
                await self._pool.execute(NOTIFY_SQL)
            except DATABASE_ERRORS as exc:
                log.warning("store.notify_failed", error=repr(exc))
                return
            if not self._again:
                return

    async def flush(self) -> None:
        """Wait for the wake-up in flight, if any (before the pool closes)."""
        if self._sending is not None:
            await asyncio.gather(self._sending, return_exceptions=True)


class EventStore:
    """Append and read events; one instance per pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.notifier = Notifier(pool)

    @property
    def pool(self) -> asyncpg.Pool:
        """The connection pool the store uses."""
        return self._pool

    async def append_to_stream(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int = ANY,
        *,
        connection: Connection | None = None,
    ) -> AppendResult:
        """Append events atomically; raises WrongExpectedVersion or EventIdConflict."""
        args = (stream_id, expected_version, *event_columns(events))
        sent = 0

        async def send() -> asyncpg.Record | None:
            nonlocal sent
            sent += 1
            return await self._pool.fetchrow(APPEND_SQL, *args)

        try:
            if connection is not None:  # the caller's session (and transaction): no retry
                row = await connection.fetchrow(APPEND_SQL, *args)
            else:
                row = await again_if_lost(send, "append")
        except asyncpg.PostgresError as exc:
            raise _translate(exc, stream_id, expected_version) from exc
        assert row is not None
        # (On a caller's transaction the wake-up may come before its commit: readers
        # then find the events at their next poll.)
        self.notifier.poke()
        # Sent again after a lost connection, the events found are (all but surely) the
        # first attempt's: this call wrote them. (Another call with the same event ids
        # between the two attempts would be told the same.)
        duplicate = bool(row["duplicate"]) and sent <= 1
        return AppendResult(
            row["first_position"], row["last_position"], row["stream_version"], duplicate
        )

    async def read_stream(
        self, stream_id: str, after_version: int = 0, up_to_version: int = 2**31 - 1
    ) -> list[RecordedEvent]:
        """Events of one stream in version order (empty when it does not exist)."""
        rows = await again_if_lost(
            lambda: self._pool.fetch(READ_STREAM_SQL, stream_id, after_version, up_to_version),
            "read_stream",
        )
        return [_row_to_event(r) for r in rows]

    async def read_all(self, after: Checkpoint = START, limit: int = 1000) -> list[RecordedEvent]:
        """Committed events after a checkpoint, in gap-safe commit order."""
        rows = await again_if_lost(
            lambda: self._pool.fetch(
                READ_ALL_SQL, str(after.transaction_id), after.global_position, limit
            ),
            "read_all",
        )
        return [_row_to_event(r) for r in rows]

    async def subscribe(
        self,
        after: Checkpoint = START,
        *,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        settle_s: float = 0.0,
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Yield batches of new events forever; wakes on NOTIFY, polls as a fallback.

        ``settle_s``: after a wake-up, wait this long before reading, so that one read
        takes the appends of that moment together (under load: one read per settle
        period, not one per append).

        The LISTEN session may end under it (a killed backend, a failover) while reads,
        which go through the pool, still work: it listens again on a new session at
        once, rather than go on without wake-ups, polling only."""
        wake = asyncio.Event()
        checkpoint = after

        def on_notify(*_: Any) -> None:
            wake.set()

        while True:
            async with self._listening(on_notify) as lost:
                while not lost.is_set():
                    wake.clear()  # before reading, so a NOTIFY during the read is not lost
                    batch = await self.read_all(checkpoint, batch_size)
                    if batch:
                        checkpoint = checkpoint_of(batch[-1])
                        yield batch
                        if len(batch) == batch_size:
                            continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), poll_interval)
                    if settle_s > 0 and not lost.is_set():
                        await asyncio.sleep(settle_s)
            log.warning("store.listener_lost", channel=NOTIFY_CHANNEL, checkpoint=str(checkpoint))

    @contextlib.asynccontextmanager
    async def _listening(self, on_notify: Callable[..., None]) -> AsyncIterator[asyncio.Event]:
        """A session that LISTENs, calling ``on_notify``; the event yielded is set (and
        ``on_notify`` called) when the session ends under it."""
        lost = asyncio.Event()

        def on_lost(_: object) -> None:
            lost.set()
            on_notify()

        async with stateful(self._pool) as listener:
            listener.add_termination_listener(on_lost)
            try:
                await listener.add_listener(NOTIFY_CHANNEL, on_notify)
                yield lost
            finally:
                # Dropped with the session if it ended; else it would outlive this use of
                # the pooled connection (a reset keeps termination listeners).
                with contextlib.suppress(asyncpg.InterfaceError):
                    listener.remove_termination_listener(on_lost)


def _translate(exc: asyncpg.PostgresError, stream_id: str, expected: int) -> Exception:
    code = getattr(exc, "sqlstate", None)
    if code == "FL409":
        detail = getattr(exc, "detail", "") or ""
        return WrongExpectedVersion(stream_id, expected, detail.removeprefix("actual="))
    if code == "FL422" or isinstance(exc, asyncpg.UniqueViolationError):
        return EventIdConflict(str(exc))
    return exc
