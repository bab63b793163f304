"""Tamper evidence: hash chains catch edits, digests catch deletions and rewrites.

The tampering is done the way an attacker with superuser rights would: the
immutability triggers are switched off and rows are changed in place.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from service.domain.events import RunFailed
from service.store import NO_STREAM, AppendResult, EventStore, NewEvent
from service.store.database import connect
from service.store.verify import VerifyReport, check_digest, take_digest, verify_chains
from tests.conftest import TestDatabase

CLI = Path(sys.executable).with_name("fusion-ledger")


def failed(message: str) -> NewEvent:
    return NewEvent(RunFailed(reason="timeout", message=message))


@dataclass(frozen=True)
class Stored:
    stream_id: str
    events: list[NewEvent]
    result: AppendResult


async def append_stream(store: EventStore, count: int = 3) -> Stored:
    stream = f"run-{uuid.uuid4()}"
    events = [failed(f"run deadline passed ({i})") for i in range(count)]
    return Stored(stream, events, await store.append_to_stream(stream, events, NO_STREAM))


@pytest.fixture
async def superuser(database: TestDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the test's schema with the log's triggers switched off."""
    conn = await connect(database.url)
    is_super = await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    if not is_super:
        await conn.close()
        pytest.skip("tampering needs a superuser connection")
    await conn.execute("ALTER TABLE events DISABLE TRIGGER ALL")
    try:
        yield conn
    finally:
        await conn.close()


async def verify(store: EventStore) -> VerifyReport:
    async with store.pool.acquire() as conn:
        return await verify_chains(conn)


async def test_clean_log_verifies(store: EventStore) -> None:
    for count in (1, 2, 5):
        await append_stream(store, count)
    report = await verify(store)
    assert report.ok, report.problems
    assert (report.events, report.streams) == (8, 3)


class AppendsAfterHeads:
    """A connection that lets the log grow right after verify reads the stream heads:
    an existing stream gets an event and a new stream appears, as under live traffic."""

    def __init__(self, conn: asyncpg.Connection, store: EventStore, stream: Stored) -> None:
        self._conn, self._store, self._stream = conn, store, stream

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._conn.fetch(query, *args)
        if "FROM streams" in query:
            s = self._stream
            await self._store.append_to_stream(s.stream_id, [failed("late")], len(s.events))
            await append_stream(self._store)
        return rows


async def test_a_log_growing_during_verify_is_not_tampered(store: EventStore) -> None:
    stored = await append_stream(store, 2)
    async with store.pool.acquire() as conn:
        report = await verify_chains(AppendsAfterHeads(conn, store, stored))  # type: ignore[arg-type]
    assert report.ok, report.problems
    assert (report.events, report.streams) == (2, 1)  # the log as of its snapshot
    assert (await verify(store)).ok


async def test_one_changed_byte_names_the_event(
    store: EventStore, superuser: asyncpg.Connection
) -> None:
    await append_stream(store)
    target = await append_stream(store)
    await append_stream(store)
    victim = target.events[1]
    # "passed (1)" -> "passes (1)": one byte of the stored data.
    changed = await superuser.execute(
        """UPDATE events SET data = jsonb_set(data, '{message}', to_jsonb(
               replace(data->>'message', 'passed', 'passes')))
           WHERE event_id = $1""",
        victim.event_id,
    )
    assert changed == "UPDATE 1"

    report = await verify(store)
    assert not report.ok
    [problem] = report.problems
    assert (problem.stream_id, problem.stream_version, problem.event_id) == (
        target.stream_id,
        2,
        str(victim.event_id),
    )
    assert problem.global_position == target.result.first_position + 1
    assert "hash does not match" in problem.reason


async def test_changed_metadata_is_caught(store: EventStore, superuser: asyncpg.Connection) -> None:
    stream = f"run-{uuid.uuid4()}"
    event = NewEvent(RunFailed(reason="timeout", message="x"), metadata={"tenant": "acme"})
    await store.append_to_stream(stream, [event], NO_STREAM)
    await superuser.execute(
        """UPDATE events SET metadata = jsonb_set(metadata, '{tenant}', '"evil"')
           WHERE event_id = $1""",
        event.event_id,
    )
    [problem] = (await verify(store)).problems
    assert (problem.stream_id, problem.event_id) == (stream, str(event.event_id))


async def test_deleting_the_last_event_of_a_stream_is_reported(
    store: EventStore, superuser: asyncpg.Connection
) -> None:
    target = await append_stream(store)
    await append_stream(store)
    await superuser.execute("DELETE FROM events WHERE event_id = $1", target.events[-1].event_id)
    report = await verify(store)
    [problem] = report.problems
    assert problem.stream_id == target.stream_id
    assert "removed from its end" in problem.reason


async def test_deleting_a_middle_event_is_reported(
    store: EventStore, superuser: asyncpg.Connection
) -> None:
    target = await append_stream(store)
    await superuser.execute("DELETE FROM events WHERE event_id = $1", target.events[1].event_id)
    [problem] = (await verify(store)).problems
    assert (problem.stream_id, problem.stream_version) == (target.stream_id, 3)
    assert "version gap" in problem.reason


async def test_deleting_every_event_but_keeping_the_stream_row_is_reported(
    store: EventStore, superuser: asyncpg.Connection
) -> None:
    target = await append_stream(store)
    await superuser.execute("DELETE FROM events WHERE stream_id = $1", target.stream_id)
    [problem] = (await verify(store)).problems
    assert problem.stream_id == target.stream_id
    assert "missing" in problem.reason


async def test_digest_catches_a_deleted_stream(
    store: EventStore, superuser: asyncpg.Connection
) -> None:
    await append_stream(store)
    target = await append_stream(store)
    async with store.pool.acquire() as conn:
        digest = await take_digest(conn)
        assert digest.events == 6
        assert (await check_digest(conn, digest)).ok

    await superuser.execute("DELETE FROM events WHERE stream_id = $1", target.stream_id)
    await superuser.execute("DELETE FROM streams WHERE stream_id = $1", target.stream_id)

    # Every remaining chain is intact: only the digest kept elsewhere can tell.
    assert (await verify(store)).ok
    async with store.pool.acquire() as conn:
        check = await check_digest(conn, digest)
    assert not check.ok
    assert check.events_now == 3
    assert "3 of 6 events are gone" in check.message
    assert "1 streams are gone" in check.message


async def test_digest_catches_a_consistently_rewritten_stream(
    store: EventStore, superuser: asyncpg.Connection
) -> None:
    target = await append_stream(store, count=1)
    async with store.pool.acquire() as conn:
        digest = await take_digest(conn)
    # A careful attacker rewrites the data and recomputes the hash and the stream head,
    # so the chain verifies again.
    await superuser.execute(
        """UPDATE events SET
               data = jsonb_set(data, '{message}', '"nothing happened"'),
               hash = sha256(prev_hash || event_canonical_bytes(event_id, event_type,
                   schema_version, recorded_at,
                   jsonb_set(data, '{message}', '"nothing happened"'), metadata))
           WHERE stream_id = $1""",
        target.stream_id,
    )
    await superuser.execute(
        """UPDATE streams SET last_hash = (SELECT hash FROM events WHERE stream_id = $1)
           WHERE stream_id = $1""",
        target.stream_id,
    )
    assert (await verify(store)).ok
    async with store.pool.acquire() as conn:
        check = await check_digest(conn, digest)
    assert not check.ok
    assert "rewritten" in check.message


async def test_log_extends_an_earlier_digest(store: EventStore) -> None:
    await append_stream(store)
    async with store.pool.acquire() as conn:
        digest = await take_digest(conn)
    await append_stream(store)
    extended = await append_stream(store, count=1)
    await store.append_to_stream(extended.stream_id, [failed("more")], 1)
    async with store.pool.acquire() as conn:
        check = await check_digest(conn, digest)
        later = await take_digest(conn)
    assert check.ok, check.message
    assert later.events == 3 + 3 + 2
    assert later.root != digest.root


async def test_digest_up_to_a_position_survives_out_of_order_commits(store: EventStore) -> None:
    before = await append_stream(store, count=1)
    async with store.pool.acquire() as slow:
        tx = slow.transaction()
        await tx.start()
        # The slow transaction takes its transaction id first (earlier in commit order)
        # but its position after the fast append's.
        await slow.fetchval("SELECT pg_current_xact_id()")
        fast = await append_stream(store, count=1)
        slow_result = await store.append_to_stream(
            f"run-{uuid.uuid4()}", [failed("slow")], NO_STREAM, connection=slow
        )
        await tx.commit()
    assert fast.result.first_position < slow_result.first_position
    async with store.pool.acquire() as conn:
        digest = await take_digest(conn, up_to_position=fast.result.first_position)
        check = await check_digest(conn, digest)
        assert check.ok, check.message
    # The digest is a prefix in commit order that holds nothing past the position:
    # it stops before the slow event, so the fast one (committed after it) is out too.
    assert (digest.events, digest.global_position) == (1, before.result.first_position)


async def run_cli(database: TestDatabase, *args: str, columns: int = 80) -> tuple[int, str, str]:
    command = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "service"]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["COLUMNS"] = str(columns)  # a CI log's width
    process = await asyncio.create_subprocess_exec(
        *command,
        "--database-url",
        database.url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_verify_and_digest(
    store: EventStore, database: TestDatabase, superuser: asyncpg.Connection, tmp_path: Path
) -> None:
    kept = await append_stream(store)
    doomed = await append_stream(store)
    digest_file = tmp_path / "digest.json"

    code, out, err = await run_cli(database, "verify", "--json")
    assert code == 0, err
    clean = json.loads(out)
    assert (clean["ok"], clean["events"], clean["streams"], clean["problems"]) == (True, 6, 2, [])

    code, out, err = await run_cli(database, "digest", "-o", str(digest_file))
    assert code == 0, err
    saved = json.loads(digest_file.read_text())
    assert saved["events"] == 6

    await append_stream(store)  # the log grows: it still extends the digest
    code, out, err = await run_cli(database, "verify", "--digest", str(digest_file), "--json")
    assert code == 0, err
    assert json.loads(out)["digest"]["ok"] is True

    # A file that is not such a digest cannot be checked (2): not passed, not "tampered".
    for change in ({"format": "something-else/9"}, {"transaction_id": -1}, {"root": "zz"}):
        odd = tmp_path / "odd.json"
        odd.write_text(json.dumps(saved | change))
        code, _, err = await run_cli(database, "verify", "--digest", str(odd))
        assert code == 2, (change, err)
        assert "is not a fusion-ledger digest" in err

    victim = kept.events[0]
    await superuser.execute(
        """UPDATE events SET data = jsonb_set(data, '{message}', '"run deadline passes (0)"')
           WHERE event_id = $1""",
        victim.event_id,
    )
    code, out, err = await run_cli(database, "verify", "--json")
    assert code == 1, err
    tampered = json.loads(out)
    assert tampered["ok"] is False
    [problem] = tampered["problems"]
    assert (problem["stream_id"], problem["stream_version"], problem["event_id"]) == (
        kept.stream_id,
        1,
        str(victim.event_id),
    )

    await superuser.execute("DELETE FROM events WHERE stream_id = $1", doomed.stream_id)
    await superuser.execute("DELETE FROM streams WHERE stream_id = $1", doomed.stream_id)
    code, out, err = await run_cli(database, "verify", "--digest", str(digest_file), "--json")
    assert code == 1, err
    report = json.loads(out)
    assert report["digest"]["ok"] is False
    assert "events are gone" in report["digest"]["message"]

    # The human-readable form says so too, with the same exit code.
    code, out, err = await run_cli(database, "verify", "--digest", str(digest_file))
    assert code == 1, err
    assert "TAMPERED" in out
    # At 80 columns the problem is readable: its event id and its reason, whole on one
    # line (a table squeezed the reason to nothing and cut the id).
    [line] = [line for line in out.splitlines() if str(victim.event_id) in line]
    assert kept.stream_id in line and "hash" in line, out
